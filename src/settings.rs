//! Every setting `chat` reads, from one place: `chat config --list` prints them (text or
//! JSON) and `chat config --check -- ARGS` validates a command line and environment without
//! starting anything. scripts/check_deploy.py reads the list, so the deployment files are
//! checked against what this binary accepts, not against a copy.
//!
//! The flags come from clap's own description of the command line ([`Cli::command`]), so the
//! list cannot drift from what `chat serve` parses. The environment variables read outside
//! clap are [`PROCESS_ENV`]; code that reads one names it through [`env`](mod@env) (a unit test
//! below refuses `std::env::var` on a literal anywhere in `src/`).

use clap::builder::{Arg, ArgAction};
use clap::{CommandFactory, Parser};
use serde::Serialize;

use crate::cli::{Cli, Command, ConfigArgs, ListFormat};
use crate::config::{Config, ConfigError, MigrateTarget};

/// Names of the environment variables read outside clap. Read them only through these.
pub mod env {
    /// The log filter (tracing's `EnvFilter` syntax), read by `telemetry::init_logging`.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// Backtraces of errors (anyhow, `std::backtrace`); `main` sets it to 0 when unset.
    pub const RUST_LIB_BACKTRACE: &str = "RUST_LIB_BACKTRACE";
    /// Backtraces of panics, read by the standard library.
    pub const RUST_BACKTRACE: &str = "RUST_BACKTRACE";
    /// Threads of the async runtime, read by tokio when `--runtime-threads` is not given.
    pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";
}

/// An environment variable read outside clap.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Every environment variable the binary reads besides its flags' fallbacks.
pub const PROCESS_ENV: [ProcessEnv; 4] = [
    ProcessEnv {
        name: env::RUST_LOG,
        default: Some("info"),
        help: "Log filter (tracing EnvFilter directives); actix_http's per-connection \
               errors stay off unless it names actix_http",
    },
    ProcessEnv {
        name: env::RUST_LIB_BACKTRACE,
        default: Some("0"),
        help: "1: errors capture a backtrace (costly: clients can cause errors at will)",
    },
    ProcessEnv {
        name: env::RUST_BACKTRACE,
        default: None,
        help: "1: panics print a backtrace (read by the Rust standard library)",
    },
    ProcessEnv {
        name: env::TOKIO_WORKER_THREADS,
        default: None,
        help: "Threads of the async runtime when --runtime-threads is not given \
               (read by tokio)",
    },
];

/// `scope` of a flag every subcommand takes.
pub const GLOBAL: &str = "global";
/// `scope` of an environment variable read outside clap.
pub const PROCESS: &str = "process";

/// One line of `chat config --list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The subcommand that takes the flag (`serve`, `migrate`), `global` for a flag every
    /// subcommand takes, `process` for an environment variable read outside clap.
    pub scope: String,
    /// `--long-name`; none for `process` variables.
    pub flag: Option<String>,
    /// The environment variable: the flag's fallback, or the variable itself.
    pub env: Option<String>,
    /// `value` (one value), `list` (comma separated values), `switch` (no value; the
    /// environment variable takes true/false, 1/0, yes/no, on/off).
    pub kind: &'static str,
    /// The values accepted, when there is a fixed set.
    pub values: Vec<String>,
    pub default: Option<String>,
    /// Whether `--help` hides the variable's value (URLs with passwords, secrets).
    pub secret: bool,
    /// The first line of the flag's help.
    pub help: String,
}

/// Every setting: the global flags, then each subcommand's, then [`PROCESS_ENV`]. The
/// `config` subcommand's own options are not settings and are left out.
pub fn list() -> Vec<Setting> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out: Vec<Setting> = cmd
        .get_arguments()
        .filter(|a| is_setting(a))
        .map(|a| setting(GLOBAL, a))
        .collect();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        if name == "config" || name == "help" {
            continue;
        }
        out.extend(
            sub.get_arguments()
                .filter(|a| is_setting(a) && !a.is_global_set())
                .map(|a| setting(name, a)),
        );
    }
    out.extend(PROCESS_ENV.iter().map(|p| Setting {
        scope: PROCESS.to_owned(),
        flag: None,
        env: Some(p.name.to_owned()),
        kind: "value",
        values: Vec::new(),
        default: p.default.map(str::to_owned),
        secret: false,
        help: p.help.to_owned(),
    }));
    out
}

fn is_setting(a: &Arg) -> bool {
    !matches!(
        a.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

fn setting(scope: &str, a: &Arg) -> Setting {
    let kind = match a.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count => "switch",
        ArgAction::Append => "list",
        _ if a.get_value_delimiter().is_some() => "list",
        _ => "value",
    };
    let default = a.get_default_values();
    Setting {
        scope: scope.to_owned(),
        flag: a.get_long().map(|l| format!("--{l}")),
        env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
        kind,
        values: if kind == "switch" {
            Vec::new()
        } else {
            a.get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect()
        },
        // A switch's implicit `false` is not a default worth listing.
        default: (kind != "switch" && !default.is_empty()).then(|| {
            default
                .iter()
                .map(|d| d.to_string_lossy())
                .collect::<Vec<_>>()
                .join(",")
        }),
        secret: a.is_hide_env_values_set(),
        help: a
            .get_help()
            .map(|h| h.to_string())
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// One line per setting, tab separated: scope, flag, env, kind, values (`|` separated),
/// default, help; `-` for nothing. The first line is a header starting with `#`.
pub fn render_text(settings: &[Setting]) -> String {
    let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
    let mut out = String::from("#scope\tflag\tenv\tkind\tvalues\tdefault\thelp\n");
    for s in settings {
        let values = s.values.join("|");
        let cols = [
            s.scope.clone(),
            dash(s.flag.as_deref()),
            dash(s.env.as_deref()),
            s.kind.to_owned(),
            dash(Some(&values)),
            dash(s.default.as_deref()),
            s.help.replace(['\t', '\n'], " "),
        ];
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    out
}

/// What `chat config` prints, and whether it succeeded.
pub fn run(args: &ConfigArgs) -> Result<String, ConfigError> {
    if args.check {
        return check(&args.args).map(|what| format!("ok: {what}\n"));
    }
    if !args.args.is_empty() {
        return Err(ConfigError {
            setting: "command line",
            problem: "a command after `--` is checked only with --check".to_owned(),
        });
    }
    let settings = list();
    Ok(match args.format {
        ListFormat::Text => render_text(&settings),
        ListFormat::Json => {
            // A Vec of plain structs: serializing cannot fail.
            let mut s = serde_json::to_string_pretty(&settings).unwrap_or_default();
            s.push('\n');
            s
        }
    })
}

/// Parses `chat ARGS` with the current environment and validates it as `chat serve` or
/// `chat migrate` would at start, without connecting to anything.
pub fn check(args: &[String]) -> Result<String, ConfigError> {
    let argv = std::iter::once("chat".to_owned()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| ConfigError {
        setting: "command line",
        problem: e.to_string().trim().to_owned(),
    })?;
    match cli.command {
        Command::Serve(a) => {
            let c = Config::from_args(&a)?;
            let mode = match c.backend {
                crate::config::Backend::Embedded { .. } => "embedded",
                crate::config::Backend::Distributed(_) => "distributed",
            };
            Ok(format!("chat serve, role {:?}, {mode} mode", c.role).to_lowercase())
        }
        Command::Migrate(a) => {
            MigrateTarget::from_args(&a)?;
            Ok("chat migrate".to_owned())
        }
        Command::Config(_) => Err(ConfigError {
            setting: "command line",
            problem: "give the command to check: chat config --check -- serve …".to_owned(),
        }),
        Command::Admin(_) => Ok("chat admin".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_serve_flag_with_an_env_is_listed() {
        let settings = list();
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve");
        let mut n = 0;
        for a in serve.get_arguments() {
            let (Some(long), Some(env)) = (a.get_long(), a.get_env()) else {
                continue;
            };
            n += 1;
            let env = env.to_string_lossy();
            assert!(
                settings.iter().any(|s| s.scope == "serve"
                    && s.flag.as_deref() == Some(&format!("--{long}"))
                    && s.env.as_deref() == Some(&*env)),
                "--{long} / {env} missing from config --list"
            );
        }
        assert!(n >= 30, "only {n} serve flags with an env");
        // The global flag and a variable read outside clap are there too.
        assert!(settings.iter().any(|s| s.scope == GLOBAL
            && s.flag.as_deref() == Some("--log-format")
            && s.env.as_deref() == Some("LOG_FORMAT")));
        assert!(settings
            .iter()
            .any(|s| s.scope == PROCESS && s.env.as_deref() == Some(env::RUST_LOG)));
    }

    #[test]
    fn every_flag_has_an_env_fallback() {
        for s in list() {
            assert!(s.env.is_some(), "{s:?} has no environment fallback");
            assert!(!s.help.is_empty(), "{s:?} has no help");
        }
    }

    /// One environment variable means one thing: a name appears once, except a flag that two
    /// subcommands share (`--database-url` / DATABASE_URL of serve and migrate), which must
    /// then be the same flag.
    #[test]
    fn names_are_unique() {
        let settings = list();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        for s in &settings {
            let env = s.env.as_deref().unwrap_or_default();
            assert!(
                seen.insert((s.scope.as_str(), env)),
                "{env} twice in {}",
                s.scope
            );
            for t in &settings {
                if t.env == s.env {
                    assert_eq!(t.flag, s.flag, "{env} is two different flags");
                }
                if t.flag.is_some() && t.flag == s.flag && t.scope == s.scope {
                    assert_eq!(t.env, s.env, "{:?} twice in {}", s.flag, s.scope);
                }
            }
        }
        let flags: HashSet<_> = settings
            .iter()
            .filter(|s| s.scope == "serve")
            .map(|s| &s.flag)
            .collect();
        assert_eq!(
            flags.len(),
            settings.iter().filter(|s| s.scope == "serve").count()
        );
    }

    #[test]
    fn kinds_defaults_and_values_come_from_clap() {
        let settings = list();
        let get = |flag: &str| {
            settings
                .iter()
                .find(|s| s.scope == "serve" && s.flag.as_deref() == Some(flag))
                .unwrap_or_else(|| panic!("{flag} not listed"))
        };
        let role = get("--role");
        assert_eq!(role.env.as_deref(), Some("CHAT_ROLE"));
        assert_eq!(role.kind, "value");
        assert_eq!(role.values, ["gateway", "consumer", "all"]);
        assert_eq!(role.default.as_deref(), Some("all"));
        assert_eq!(get("--no-migrate").kind, "switch");
        assert_eq!(get("--no-migrate").default, None);
        assert_eq!(get("--allowed-origins").kind, "list");
        assert_eq!(get("--kafka-partitions").default.as_deref(), Some("8"));
        assert!(get("--jwt-secret").secret);
        assert!(!get("--kafka-topic").secret);
        // The `config` subcommand's own options are not settings.
        assert!(!settings.iter().any(|s| s.scope == "config"));
        assert!(!settings.iter().any(|s| s.flag.as_deref() == Some("--help")));
    }

    #[test]
    fn text_is_one_line_per_setting_and_json_parses() {
        let settings = list();
        let text = render_text(&settings);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), settings.len() + 1);
        assert!(lines[0].starts_with('#'));
        for l in &lines {
            assert_eq!(l.split('\t').count(), 7, "{l:?}");
        }
        assert!(
            lines.contains(&"serve\t--role\tCHAT_ROLE\tvalue\tgateway|consumer|all\tall\tWhich subsystems to run"),
            "{text}"
        );
        let args = ConfigArgs {
            list: true,
            format: ListFormat::Json,
            check: false,
            args: Vec::new(),
        };
        let json: serde_json::Value = serde_json::from_str(&run(&args).unwrap()).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(settings.len()));
        assert_eq!(json[0]["flag"], "--log-format");
    }

    #[test]
    fn check_validates_without_starting() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = check(&argv(&[
            "serve",
            "--role",
            "gateway",
            "--database-url",
            "postgres://u:p@h/db",
            "--redis-url",
            "redis://h:6379",
            "--kafka-brokers",
            "h:9092",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ]))
        .unwrap();
        assert_eq!(ok, "chat serve, role gateway, distributed mode");
        let e = check(&argv(&[
            "serve",
            "--database-url",
            "postgres://u:p@h/db",
            "--redis-url",
            "redis://h:6379",
            "--kafka-brokers",
            "h:9092",
            "--jwt-secret",
            "short",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("JWT_SECRET"), "{e}");
        let e = check(&argv(&["serve", "--max-queued-mb", "1"])).unwrap_err();
        assert!(e.to_string().contains("--max-queued-mb"), "{e}");
        assert!(check(&argv(&["migrate", "--database-url", "mysql://h/db"])).is_err());
        assert!(check(&argv(&["migrate", "--database-url", "sqlite://x.db"])).is_ok());
        assert!(check(&argv(&["config", "--list"])).is_err());
    }

    /// README.md's configuration table names every flag with its variable and, where it
    /// shows one in backticks, the same default; the variables read outside clap are named
    /// there too.
    #[test]
    fn the_readme_table_matches() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let rows: Vec<Vec<&str>> = readme
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut checked_defaults = 0;
        for s in list() {
            let env = s.env.clone().unwrap_or_default();
            let Some(flag) = &s.flag else {
                assert!(readme.contains(&format!("`{env}")), "README lacks {env}");
                continue;
            };
            let row = rows
                .iter()
                .find(|r| ticked(r[1]).contains(flag))
                .unwrap_or_else(|| panic!("README's configuration table lacks {flag}"));
            let flags = ticked(row[1]);
            let i = flags.iter().position(|f| f == flag).unwrap_or_default();
            assert_eq!(
                ticked(row[2]).get(i),
                Some(&env),
                "README: {flag} is not shown with {env}"
            );
            let defaults = ticked(row[3]);
            if let (Some(default), true) = (&s.default, defaults.len() == flags.len()) {
                assert_eq!(&defaults[i], default, "README: default of {flag}");
                checked_defaults += 1;
            }
        }
        assert!(checked_defaults >= 20, "{checked_defaults}");
    }

    /// Environment variables are read through [`env`](mod@env), so [`PROCESS_ENV`] lists them all.
    #[test]
    fn no_environment_read_on_a_literal_name() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // Built from pieces so this file does not match itself.
        let needles = [
            concat!("env::", "var(\""),
            concat!("env::", "var_os(\""),
            concat!("env::", "vars("),
            concat!("env::", "set_var(\""),
        ];
        let mut stack = vec![src];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files += 1;
                    let text = std::fs::read_to_string(&path).unwrap();
                    let flat: String = text.split_whitespace().collect();
                    for n in needles {
                        let n: String = n.split_whitespace().collect();
                        assert!(
                            !flat.contains(&n),
                            "{} reads the environment by a literal name ({n}): name it in \
                             settings::env and PROCESS_ENV",
                            path.display()
                        );
                    }
                }
            }
        }
        assert!(files > 20);
        let names: HashSet<&str> = PROCESS_ENV.iter().map(|p| p.name).collect();
        assert_eq!(names.len(), PROCESS_ENV.len());
    }
}
