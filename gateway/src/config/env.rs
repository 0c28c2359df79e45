//! Environment overrides: `HOLDFAST__SECTION__KEY=value` applied on top of the file's tree.
//!
//! Owns parsing variable names into tree paths and writing their values into the raw tree,
//! creating tables on the way. It never checks that a key exists: an override naming an unknown
//! key lands in the tree marked with its variable, and `validate` reports it like any other
//! unknown key, naming the variable.

use super::raw::{env_value, Node, Source, Value};
use super::Problem;

/// The prefix that marks a variable as a config override.
const PREFIX: &str = "HOLDFAST__";

/// One step of an override path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    /// An array index, e.g. the `0` of `HOLDFAST__LISTENERS__0__BIND`.
    Index(usize),
    /// A table key, lowercased.
    Key(String),
}

/// Applies every `HOLDFAST__*` variable in `env` to `root`; other variables are ignored.
/// Variables are applied in path order (indices numerically), so `LISTENERS__1__BIND` can
/// append a listener after `LISTENERS__0__...` has edited the first, whatever the order of `env`.
pub(crate) fn apply(
    root: &mut Node,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    let mut overrides = Vec::new();
    for (var, text) in env {
        let Some(rest) = strip_prefix(&var) else {
            continue;
        };
        match parse_path(rest) {
            Ok(path) => overrides.push((path, var, text)),
            Err(message) => problems.push(env_problem(&var, String::new(), message)),
        }
    }
    overrides.sort();
    for (path, var, text) in overrides {
        if let Err(message) = set(root, &path, &var, &text) {
            problems.push(env_problem(&var, display_path(&path), message));
        }
    }
}

fn strip_prefix(var: &str) -> Option<&str> {
    let head = var.get(..PREFIX.len())?;
    if head.eq_ignore_ascii_case(PREFIX) {
        var.get(PREFIX.len()..)
    } else {
        None
    }
}

fn parse_path(rest: &str) -> Result<Vec<Segment>, String> {
    let mut path = Vec::new();
    for (i, part) in rest.split("__").enumerate() {
        if part.is_empty() {
            return Err("empty key in the variable name (use `__` only between keys)".to_owned());
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            if i == 0 {
                return Err(format!("{part:?} is not a section name"));
            }
            let index = part
                .parse()
                .map_err(|_| format!("index {part} is too large"))?;
            path.push(Segment::Index(index));
        } else {
            path.push(Segment::Key(part.to_ascii_lowercase()));
        }
    }
    Ok(path)
}

/// The config key path of `path`, as problems show it: `listeners[0].bind`.
fn display_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

fn env_problem(var: &str, key: String, message: String) -> Problem {
    Problem {
        origin: var.to_owned(),
        line: None,
        key,
        message,
    }
}

fn set(root: &mut Node, path: &[Segment], var: &str, text: &str) -> Result<(), String> {
    let source = Source::Env {
        var: var.to_owned(),
        text: text.to_owned(),
    };
    let mut node = root;
    for (i, segment) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        // What to create when this step is missing: the value itself at the end, else a
        // container of the kind the next step needs.
        let fresh = || {
            if last {
                env_value(var, text)
            } else if matches!(path.get(i + 1), Some(Segment::Index(_))) {
                Node {
                    value: Value::Array(Vec::new()),
                    source: source.clone(),
                }
            } else {
                Node::table(source.clone())
            }
        };
        let here = display_path(&path[..i]);
        node = match (segment, &mut node.value) {
            (Segment::Key(key), Value::Table(entries)) => {
                let position = match entries.iter().position(|(k, _)| k == key) {
                    Some(position) => {
                        if last {
                            entries[position].1 = fresh();
                        }
                        position
                    }
                    None => {
                        entries.push((key.clone(), fresh()));
                        entries.len() - 1
                    }
                };
                &mut entries[position].1
            }
            (Segment::Index(index), Value::Array(items)) => {
                let len = items.len();
                if *index > len {
                    return Err(format!(
                        "index {index} is past the end of {here} ({len} entries; use {len} to add one)"
                    ));
                }
                if *index == len {
                    items.push(if last {
                        fresh()
                    } else {
                        Node::table(source.clone())
                    });
                } else if last {
                    items[*index] = fresh();
                }
                &mut items[*index]
            }
            (Segment::Index(_), _) => return Err(format!("{here} is not an array")),
            (Segment::Key(_), _) if here.is_empty() => return Err("not a table".to_owned()),
            (Segment::Key(_), _) => return Err(format!("{here} is not a table")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::raw::parse_toml;
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_override_replaces_a_file_value_and_creates_missing_tables() {
        let mut root = parse_toml("[mqtt]\nmax_inflight = 5\n", "f").unwrap();
        let mut problems = Vec::new();
        apply(
            &mut root,
            vars(&[
                ("HOLDFAST__MQTT__MAX_INFLIGHT", "7"),
                ("holdfast__node__name", "gw"),
                ("PATH", "/bin"),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let inflight = root.get("mqtt").unwrap().get("max_inflight").unwrap();
        assert_eq!(inflight.value, Value::Int(7));
        assert!(
            matches!(&inflight.source, Source::Env { var, .. } if var == "HOLDFAST__MQTT__MAX_INFLIGHT")
        );
        let name = root.get("node").unwrap().get("name").unwrap();
        assert_eq!(name.value, Value::Str("gw".into()));
    }

    #[test]
    fn indices_edit_existing_entries_and_append_in_numeric_order() {
        let mut root = parse_toml("[[listeners]]\nbind = \"0.0.0.0:1883\"\n", "f").unwrap();
        let mut problems = Vec::new();
        let mut env = vars(&[("HOLDFAST__LISTENERS__0__BIND", "127.0.0.1:1884")]);
        for i in (1..=10).rev() {
            env.push((
                format!("HOLDFAST__LISTENERS__{i}__BIND"),
                format!("127.0.0.1:{i}"),
            ));
        }
        apply(&mut root, env, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let Value::Array(items) = &root.get("listeners").unwrap().value else {
            panic!("listeners is not an array");
        };
        assert_eq!(items.len(), 11);
        assert_eq!(
            items[0].get("bind").unwrap().value,
            Value::Str("127.0.0.1:1884".into())
        );
        assert_eq!(
            items[10].get("bind").unwrap().value,
            Value::Str("127.0.0.1:10".into())
        );
    }

    #[test]
    fn an_index_past_the_end_or_into_a_table_is_reported_with_its_variable() {
        let mut root = parse_toml("[mqtt]\n", "f").unwrap();
        let mut problems = Vec::new();
        apply(
            &mut root,
            vars(&[
                ("HOLDFAST__LISTENERS__3__BIND", "x"),
                ("HOLDFAST__MQTT__0", "x"),
                ("HOLDFAST__MQTT____X", "x"),
            ]),
            &mut problems,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|p| p.starts_with(
                "HOLDFAST__LISTENERS__3__BIND: listeners[3].bind: index 3 is past the end"
            )),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.starts_with("HOLDFAST__MQTT__0: mqtt[0]: mqtt is not an array")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.starts_with("HOLDFAST__MQTT____X: empty key")),
            "{text:?}"
        );
    }
}
