//! Token issue and verification against real key stores, on SQLite and (when
//! `TANDEM_TEST_DATABASE_URL` is set) PostgreSQL.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tandem_auth::{AuthError, Authenticator, Caller, KeyStore, MIGRATOR, Role, TokenSettings};
use tandem_domain::PartnerId;
use tandem_storage::{Database, testing::TestDatabase};

const HOUR: Duration = Duration::from_secs(3600);

async fn authenticator(database: &TestDatabase, audience: &str) -> (Authenticator, KeyStore) {
    let database = Database::open(database.location(), "auth", &MIGRATOR)
        .await
        .expect("open the auth database");
    let store = KeyStore::new(database);
    let authenticator = Authenticator::load(
        store.clone(),
        TokenSettings {
            audience: audience.to_owned(),
        },
    )
    .await
    .expect("load keys");
    (authenticator, store)
}

async fn tokens_round_trip_and_refuse_forgeries(database: TestDatabase) {
    let (auth, _) = authenticator(&database, "tandem").await;
    let partner = Caller::partner(PartnerId::generate(), "tc_client");
    let issued = auth.issue(&partner, HOUR).await.unwrap();
    assert_eq!(auth.verify(&issued.token).await, Ok(partner.clone()));

    let admin = Caller::staff(Role::Admin, "alice").unwrap();
    let admin_token = auth.issue(&admin, HOUR).await.unwrap().token;
    assert_eq!(auth.verify(&admin_token).await.unwrap().role(), Role::Admin);

    let expired = auth
        .issue_at(
            &partner,
            chrono::Utc::now() - chrono::Duration::hours(2),
            HOUR,
        )
        .await
        .unwrap();
    assert_eq!(auth.verify(&expired.token).await, Err(AuthError::Expired));

    // The same keys, another audience: a token for another deployment does not work here.
    let other_audience = TestDatabase::sqlite();
    let (foreign, _) = authenticator(&other_audience, "elsewhere").await;
    let foreign_token = foreign.issue(&partner, HOUR).await.unwrap().token;
    assert_eq!(
        auth.verify(&foreign_token).await,
        Err(AuthError::UnknownKey)
    );

    let unsigned_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = issued.token.split('.').nth(1).unwrap();
    assert_eq!(
        auth.verify(&format!("{unsigned_header}.{claims}.")).await,
        Err(AuthError::Malformed)
    );

    // A valid header and claims with another key's signature.
    let mut parts: Vec<&str> = issued.token.split('.').collect();
    let foreign_signature = foreign_token.split('.').nth(2).unwrap();
    parts[2] = foreign_signature;
    assert_eq!(
        auth.verify(&parts.join(".")).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(auth.verify("not a token").await, Err(AuthError::Malformed));
}

async fn a_wrong_audience_is_refused(database: TestDatabase) {
    let (auth, store) = authenticator(&database, "tandem").await;
    let other = Authenticator::load(
        store,
        TokenSettings {
            audience: "another-exchange".to_owned(),
        },
    )
    .await
    .unwrap();
    let token = other
        .issue(&Caller::staff(Role::Ops, "bob").unwrap(), HOUR)
        .await
        .unwrap()
        .token;
    assert_eq!(auth.verify(&token).await, Err(AuthError::WrongAudience));
}

async fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(database: TestDatabase) {
    let (auth, store) = authenticator(&database, "tandem").await;
    let caller = Caller::staff(Role::Ops, "bob").unwrap();
    let before = auth.issue(&caller, HOUR).await.unwrap().token;
    // Rotated elsewhere (as `tandem keys rotate` does), while this authenticator runs.
    let new_key = store.rotate().await.unwrap();
    let other_process = Authenticator::load(
        store.clone(),
        TokenSettings {
            audience: "tandem".to_owned(),
        },
    )
    .await
    .unwrap();
    let after = other_process.issue(&caller, HOUR).await.unwrap().token;
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    assert_eq!(kid(&after), new_key.kid);
    assert_ne!(kid(&before), new_key.kid);
    assert!(
        auth.verify(&before).await.is_ok(),
        "a token from before the rotation stays valid"
    );
    assert!(
        auth.verify(&after).await.is_ok(),
        "the running verifier learns the new key"
    );
    let published = auth.public_keys().await.unwrap();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].kid, new_key.kid, "newest key first");
}

tandem_storage::on_every_database!(
    tokens_round_trip_and_refuse_forgeries,
    a_wrong_audience_is_refused,
    rotation_keeps_old_tokens_valid_and_signs_with_the_new_key
);
