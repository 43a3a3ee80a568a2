-- Keys that sign access tokens. The newest key signs; every key here verifies, so tokens signed
-- before a rotation stay valid until they expire. Rows are only ever added.
CREATE TABLE signing_keys (
    -- Key id, a UUIDv7 (so text order is creation order), sent as the JWT `kid` header.
    kid TEXT PRIMARY KEY,
    -- The Ed25519 private key, PKCS#8 DER, base64.
    private_key_pkcs8 TEXT NOT NULL,
    -- The Ed25519 public key, 32 raw bytes, base64url without padding (the JWK `x`).
    public_key TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL
);
