//! Typed settings: defaults, then an optional TOML file, then `TANDEM_…` environment variables
//! and flags (clap reads both; a flag wins), then `validate()`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;
use serde::Deserialize;
use tandem_storage::Location;
use tandem_telemetry::LogFormat;

/// Storage and logging, shared by every command that opens Tandem's databases.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// A TOML settings file; flags and TANDEM_… variables override what it says.
    #[arg(long, env = "TANDEM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the embedded SQLite files live when no database URL is given [default: ./tandem-data].
    #[arg(long, env = "TANDEM_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// A postgres:// URL to use PostgreSQL instead of the embedded SQLite files.
    #[arg(
        long,
        env = "TANDEM_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Log format: auto (human on a terminal, JSON otherwise), human or json.
    #[arg(long, env = "TANDEM_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// The audience every token carries and every server demands [default: tandem].
    #[arg(long, env = "TANDEM_TOKEN_AUDIENCE", global = true)]
    pub token_audience: Option<String>,
}

/// Flags of `tandem serve` only.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:50051].
    #[arg(long, env = "TANDEM_LISTEN")]
    pub listen: Option<String>,
    /// Lifetime of partner tokens from AuthService.IssueToken, such as 15m [default: 15m].
    #[arg(long, env = "TANDEM_PARTNER_TOKEN_TTL")]
    pub partner_token_ttl: Option<String>,
    /// How long a link code works, such as 10m [default: 10m].
    #[arg(long, env = "TANDEM_LINK_CODE_TTL")]
    pub link_code_ttl: Option<String>,
    /// Longest a request may run before it fails with DEADLINE_EXCEEDED, such as 30s [default: 30s].
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// How long a conversion quote can be executed, such as 5m [default: 5m].
    #[arg(long, env = "TANDEM_QUOTE_TTL")]
    pub quote_ttl: Option<String>,
    /// How long a process owns a conversion or earning it drives before another may take it
    /// over; also how soon a crashed process's work is resumed, such as 30s [default: 30s].
    #[arg(long, env = "TANDEM_SAGA_LEASE")]
    pub saga_lease: Option<String>,
    /// An adjustment moving more than this many minor units of any one unit waits for a second
    /// ops user's approval [default: 100000].
    #[arg(long, env = "TANDEM_ADJUSTMENT_APPROVAL_THRESHOLD")]
    pub adjustment_approval_threshold: Option<i64>,
}

/// The settings file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    log_format: Option<String>,
    token_audience: Option<String>,
    partner_token_ttl: Option<String>,
    link_code_ttl: Option<String>,
    request_timeout: Option<String>,
    quote_ttl: Option<String>,
    saga_lease: Option<String>,
    adjustment_approval_threshold: Option<i64>,
}

/// Settings every command needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub location: Location,
    pub log_format: LogFormat,
    pub token_audience: String,
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub common: Settings,
    pub listen: SocketAddr,
    pub partner_token_ttl: Duration,
    pub link_code_ttl: Duration,
    pub request_timeout: Duration,
    pub quote_ttl: Duration,
    pub saga_lease: Duration,
    /// Adjustments moving more than this, in minor units of any one unit, need a second ops user.
    pub adjustment_approval_threshold_minor: i64,
}

/// Everything wrong with the settings, one line each.
#[derive(Debug)]
pub struct SettingsError(pub Vec<String>);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid settings:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingsError {}

fn read_file(path: Option<&PathBuf>) -> Result<FileSettings, SettingsError> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| SettingsError(vec![format!("config {}: {error}", path.display())]))?;
    toml::from_str(&text)
        .map_err(|error| SettingsError(vec![format!("config {}: {error}", path.display())]))
}

fn duration(name: &str, text: &str, problems: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(text) {
        Ok(value) if !value.is_zero() => value,
        Ok(_) => {
            problems.push(format!("{name}: must be longer than zero"));
            Duration::ZERO
        }
        Err(error) => {
            problems.push(format!(
                "{name}: {error} (write durations like 30s, 15m or 1h)"
            ));
            Duration::ZERO
        }
    }
}

fn common(args: &CommonArgs, file: &FileSettings, problems: &mut Vec<String>) -> Settings {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./tandem-data"));
    let database_url = args
        .database_url
        .clone()
        .or_else(|| file.database_url.clone())
        .filter(|url| !url.is_empty());
    let location =
        Location::from_url_or_directory(database_url.map(SecretString::from), data_dir.clone())
            .unwrap_or_else(|error| {
                problems.push(format!("database_url: {error}"));
                Location::SqliteDirectory(data_dir)
            });
    let log_format = args
        .log_format
        .as_deref()
        .or(file.log_format.as_deref())
        .map_or(Ok(LogFormat::Auto), str::parse)
        .unwrap_or_else(|error| {
            problems.push(format!("log_format: {error}"));
            LogFormat::Auto
        });
    let token_audience = args
        .token_audience
        .clone()
        .or_else(|| file.token_audience.clone())
        .unwrap_or_else(|| "tandem".to_owned());
    if token_audience.is_empty() || token_audience.len() > 100 {
        problems.push("token_audience: must be 1 to 100 characters".to_owned());
    }
    Settings {
        location,
        log_format,
        token_audience,
    }
}

impl Settings {
    pub fn load(args: &CommonArgs) -> Result<Self, SettingsError> {
        let file = read_file(args.config.as_ref())?;
        let mut problems = Vec::new();
        let settings = common(args, &file, &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError(problems))
        }
    }
}

/// A duration setting: the flag or variable, else the file, else `default`; a problem when it
/// does not parse or passes `most`.
fn bounded_duration(
    name: &str,
    given: [Option<&String>; 2],
    default: &str,
    most: Option<(Duration, &str)>,
    problems: &mut Vec<String>,
) -> Duration {
    let text = given
        .into_iter()
        .flatten()
        .next()
        .map_or(default, String::as_str);
    let value = duration(name, text, problems);
    if let Some((most, why)) = most
        && value > most
    {
        problems.push(format!("{name}: must be at most {}; {why}", text_of(most)));
    }
    value
}

/// `duration` as people write it: whole hours or minutes where it divides.
fn text_of(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

impl ServeSettings {
    pub fn load(args: &CommonArgs, serve: &ServeArgs) -> Result<Self, SettingsError> {
        let file = read_file(args.config.as_ref())?;
        let mut problems = Vec::new();
        let common = common(args, &file, &mut problems);
        let listen_text = serve
            .listen
            .clone()
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
        let listen = listen_text.parse().unwrap_or_else(|error| {
            problems.push(format!(
                "listen: {error}; write an address like 127.0.0.1:50051 (port 0 picks a free port)"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let problems_so_far = &mut problems;
        let partner_token_ttl = bounded_duration(
            "partner_token_ttl",
            [
                serve.partner_token_ttl.as_ref(),
                file.partner_token_ttl.as_ref(),
            ],
            "15m",
            Some((HOURS_24, "short-lived tokens limit the harm of a leak")),
            problems_so_far,
        );
        let link_code_ttl = bounded_duration(
            "link_code_ttl",
            [serve.link_code_ttl.as_ref(), file.link_code_ttl.as_ref()],
            "10m",
            Some((HOUR, "a short-lived code limits guessing")),
            problems_so_far,
        );
        let request_timeout = bounded_duration(
            "request_timeout",
            [
                serve.request_timeout.as_ref(),
                file.request_timeout.as_ref(),
            ],
            "30s",
            None,
            problems_so_far,
        );
        let quote_ttl = bounded_duration(
            "quote_ttl",
            [serve.quote_ttl.as_ref(), file.quote_ttl.as_ref()],
            "5m",
            Some((HOUR, "a quote holds a price that terms may change")),
            problems_so_far,
        );
        let saga_lease = saga_lease(serve, &file, problems_so_far);
        let adjustment_approval_threshold_minor = approval_threshold(serve, &file, problems_so_far);
        if !problems.is_empty() {
            return Err(SettingsError(problems));
        }
        Ok(Self {
            common,
            listen,
            partner_token_ttl,
            link_code_ttl,
            request_timeout,
            quote_ttl,
            saga_lease,
            adjustment_approval_threshold_minor,
        })
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const HOURS_24: Duration = Duration::from_secs(24 * 3600);

fn saga_lease(serve: &ServeArgs, file: &FileSettings, problems: &mut Vec<String>) -> Duration {
    let lease = bounded_duration(
        "saga_lease",
        [serve.saga_lease.as_ref(), file.saga_lease.as_ref()],
        "30s",
        None,
        problems,
    );
    if lease < Duration::from_secs(1) {
        problems.push(
            "saga_lease: must be at least 1s; a shorter lease lets two processes drive one \
             conversion"
                .to_owned(),
        );
    }
    lease
}

fn approval_threshold(serve: &ServeArgs, file: &FileSettings, problems: &mut Vec<String>) -> i64 {
    let threshold = serve
        .adjustment_approval_threshold
        .or(file.adjustment_approval_threshold)
        .unwrap_or(100_000);
    if threshold < 0 {
        problems.push(format!(
            "adjustment_approval_threshold: must be 0 or more (0 makes every adjustment need a \
             second ops user); got {threshold}"
        ));
    }
    threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CommonArgs {
        CommonArgs {
            config: None,
            data_dir: None,
            database_url: None,
            log_format: None,
            token_audience: None,
        }
    }

    fn serve_args() -> ServeArgs {
        ServeArgs {
            listen: None,
            partner_token_ttl: None,
            link_code_ttl: None,
            request_timeout: None,
            quote_ttl: None,
            saga_lease: None,
            adjustment_approval_threshold: None,
        }
    }

    #[test]
    fn defaults_need_no_configuration() {
        let settings = ServeSettings::load(&args(), &serve_args()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:50051");
        assert!(
            matches!(settings.common.location, Location::SqliteDirectory(ref dir) if dir == &PathBuf::from("./tandem-data"))
        );
        assert_eq!(settings.partner_token_ttl, Duration::from_secs(900));
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tandem.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:7000\"\npartner_token_ttl = \"5m\"\ndata_dir = \"/srv/tandem\"\n",
        )
        .unwrap();
        let mut common = args();
        common.config = Some(path);
        let mut serve = serve_args();
        serve.listen = Some("127.0.0.1:0".to_owned());
        let settings = ServeSettings::load(&common, &serve).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:0");
        assert_eq!(settings.partner_token_ttl, Duration::from_secs(300));
        assert!(
            matches!(settings.common.location, Location::SqliteDirectory(ref dir) if dir == &PathBuf::from("/srv/tandem"))
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut common = args();
        common.database_url = Some("mysql://nope".to_owned());
        common.log_format = Some("xml".to_owned());
        let serve = ServeArgs {
            listen: Some("nowhere".to_owned()),
            partner_token_ttl: Some("forever".to_owned()),
            link_code_ttl: None,
            request_timeout: Some("0s".to_owned()),
            quote_ttl: None,
            saga_lease: None,
            adjustment_approval_threshold: None,
        };
        let error = ServeSettings::load(&common, &serve).unwrap_err();
        let fields: Vec<&str> = error
            .0
            .iter()
            .map(|problem| problem.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "database_url",
                "log_format",
                "listen",
                "partner_token_ttl",
                "request_timeout"
            ]
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tandem.toml");
        std::fs::write(&path, "lisen = \"0.0.0.0:7000\"\n").unwrap();
        let mut common = args();
        common.config = Some(path);
        assert!(
            Settings::load(&common)
                .unwrap_err()
                .to_string()
                .contains("lisen")
        );
    }
}
