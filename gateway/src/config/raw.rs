//! The untyped config tree: TOML values plus where each one came from.
//!
//! Owns turning TOML text into a tree of [`Node`]s that remember their line (or the environment
//! variable that set them), so that `validate` can report every problem with its location. It
//! never interprets a value: it knows nothing of keys, ranges or defaults.

use toml_edit::{ImDocument, Item, Table, Value as TomlValue};

use super::Problem;

/// Where a value in the tree came from, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// From the config file, at this 1-based line.
    File(usize),
    /// From an environment override: the variable's name and its raw text (kept so that a
    /// string setting such as a node name "1234" is not turned into a number).
    Env { var: String, text: String },
    /// Built in (the default listener when the file lists none).
    Default,
}

/// One value in the tree and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// The value itself.
    pub(crate) value: Value,
    /// Where it came from.
    pub(crate) source: Source,
}

/// A TOML value. Tables keep their keys in file order so errors come out in reading order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A TOML date-time, kept as text: no setting takes one.
    Datetime(String),
    /// An array (including an array of tables).
    Array(Vec<Node>),
    /// A table: (key, value) in file order.
    Table(Vec<(String, Node)>),
}

impl Value {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Str(s) => format!("the string {s:?}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Datetime(d) => format!("the date-time {d}"),
            Value::Array(_) => "an array".to_owned(),
            Value::Table(_) => "a table".to_owned(),
        }
    }
}

impl Node {
    /// An empty table from `source`.
    pub(crate) fn table(source: Source) -> Node {
        Node {
            value: Value::Table(Vec::new()),
            source,
        }
    }

    /// The value of `key` when this node is a table that has it.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Table(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, n)| n),
            _ => None,
        }
    }
}

/// Parses TOML text into a tree. A syntax error is one problem, with its line when known.
pub(crate) fn parse_toml(text: &str, origin: &str) -> Result<Node, Problem> {
    let lines = LineIndex::new(text);
    let doc = ImDocument::parse(text).map_err(|e| Problem {
        origin: origin.to_owned(),
        line: e.span().map(|span| lines.line_of(span.start)),
        key: String::new(),
        message: format!("invalid TOML: {}", e.message().trim_end()),
    })?;
    Ok(convert_table(doc.as_table(), 1, &lines))
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

fn convert_table(table: &Table, line: usize, lines: &LineIndex) -> Node {
    let line = table.span().map_or(line, |s| lines.line_of(s.start));
    let mut entries = Vec::new();
    for (key, item) in table.iter() {
        let key_line = table
            .key(key)
            .and_then(|k| k.span())
            .map_or(line, |s| lines.line_of(s.start));
        if let Some(node) = convert_item(item, key_line, lines) {
            entries.push((key.to_owned(), node));
        }
    }
    Node {
        value: Value::Table(entries),
        source: Source::File(line),
    }
}

fn convert_item(item: &Item, line: usize, lines: &LineIndex) -> Option<Node> {
    match item {
        Item::None => None,
        Item::Value(value) => Some(convert_value(value, line, lines)),
        Item::Table(table) => Some(convert_table(table, line, lines)),
        Item::ArrayOfTables(array) => {
            let line = array.span().map_or(line, |s| lines.line_of(s.start));
            let tables = array
                .iter()
                .map(|t| convert_table(t, line, lines))
                .collect();
            Some(Node {
                value: Value::Array(tables),
                source: Source::File(line),
            })
        }
    }
}

fn convert_value(value: &TomlValue, line: usize, lines: &LineIndex) -> Node {
    let line = value.span().map_or(line, |s| lines.line_of(s.start));
    let value = match value {
        TomlValue::String(s) => Value::Str(s.value().clone()),
        TomlValue::Integer(i) => Value::Int(*i.value()),
        TomlValue::Float(f) => Value::Float(*f.value()),
        TomlValue::Boolean(b) => Value::Bool(*b.value()),
        TomlValue::Datetime(d) => Value::Datetime(d.value().to_string()),
        TomlValue::Array(array) => Value::Array(
            array
                .iter()
                .map(|v| convert_value(v, line, lines))
                .collect(),
        ),
        TomlValue::InlineTable(table) => {
            let mut entries = Vec::new();
            for (key, item) in table.iter() {
                let key_line = table
                    .key(key)
                    .and_then(|k| k.span())
                    .map_or(line, |s| lines.line_of(s.start));
                entries.push((key.to_owned(), convert_value(item, key_line, lines)));
            }
            Value::Table(entries)
        }
    };
    Node {
        value,
        source: Source::File(line),
    }
}

/// Turns one environment value into a tree value: a TOML scalar (bool, integer, float, quoted
/// string, array, inline table) when the text parses as one, else the text as a string.
pub(crate) fn env_value(var: &str, text: &str) -> Node {
    let source = Source::Env {
        var: var.to_owned(),
        text: text.to_owned(),
    };
    let lines = LineIndex::new(text);
    let value = match text.parse::<TomlValue>() {
        Ok(TomlValue::Datetime(_)) | Err(_) => Value::Str(text.to_owned()),
        Ok(parsed) => convert_value(&parsed, 1, &lines).value,
    };
    let mut node = Node { value, source };
    restamp(&mut node);
    node
}

/// Gives every child of an environment-sourced node the node's own source, so a problem deep
/// inside an inline table still names the variable.
fn restamp(node: &mut Node) {
    let source = node.source.clone();
    match &mut node.value {
        Value::Array(items) => {
            for item in items {
                item.source = source.clone();
                restamp(item);
            }
        }
        Value::Table(entries) => {
            for (_, item) in entries {
                item.source = source.clone();
                restamp(item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_remembers_its_line() {
        let text = "a = 1\n\n[t]\nb = \"x\"\n\n[[arr]]\nc = true\n[[arr]]\nc = false\n";
        let root = parse_toml(text, "f.toml").unwrap();
        assert_eq!(root.get("a").unwrap().source, Source::File(1));
        let t = root.get("t").unwrap();
        assert_eq!(t.source, Source::File(3));
        assert_eq!(t.get("b").unwrap().source, Source::File(4));
        let Value::Array(arr) = &root.get("arr").unwrap().value else {
            panic!("arr is not an array");
        };
        assert_eq!(arr[0].source, Source::File(6));
        assert_eq!(arr[1].get("c").unwrap().source, Source::File(9));
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_its_line() {
        let problem = parse_toml("a = 1\nb = \n", "f.toml").unwrap_err();
        assert_eq!(problem.origin, "f.toml");
        assert_eq!(problem.line, Some(2));
        assert!(problem.message.starts_with("invalid TOML"), "{problem}");
    }

    #[test]
    fn env_values_parse_as_toml_scalars_or_fall_back_to_strings() {
        assert_eq!(env_value("V", "1883").value, Value::Int(1883));
        assert_eq!(env_value("V", "true").value, Value::Bool(true));
        assert_eq!(env_value("V", "1.5").value, Value::Float(1.5));
        assert_eq!(env_value("V", "\"q\"").value, Value::Str("q".into()));
        assert_eq!(
            env_value("V", "127.0.0.1:1884").value,
            Value::Str("127.0.0.1:1884".into())
        );
        assert_eq!(env_value("V", "1MB").value, Value::Str("1MB".into()));
        assert_eq!(
            env_value("V", "2024-01-01").value,
            Value::Str("2024-01-01".into())
        );
    }
}
