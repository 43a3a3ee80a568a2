//! Rows handed to a statement as one JSON parameter.
//!
//! A batch of a few hundred rows bound value by value costs a bound parameter per column per row,
//! and a new statement text for every batch size, so nothing stays prepared. Serialized as one
//! JSON array and read back as rows by the database itself, a batch is one parameter and one
//! constant statement, prepared once per connection, on both backends:
//!
//! ```text
//! INSERT INTO quotes (quote_id, points)
//! SELECT quote_id, points FROM <JsonRows::source(backend, 1, "new_quotes")>
//! ```
//!
//! reads `$1 = [["…", "2500"], …]` as the rows of `new_quotes`. Each row is an array of its
//! values in the shape's column order rather than an object keyed by column name: PostgreSQL
//! parses JSON a character at a time, and the names were most of every row's bytes (measured on
//! a bench earn run, parsing the object rows took a sixth of the server's CPU; arrays read
//! through `jsonb` cost about a third less than objects through `json_to_recordset` for a
//! 28-column row).

use serde::Serialize;
use serde::ser::{self, Impossible, SerializeStruct};

use crate::Backend;

/// The SQL type a column of JSON rows is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    BigInt,
}

/// The shape of JSON rows: each row is an array of these columns' values, in this order; a
/// `null` reads as NULL. Rows are written by [`JsonRows::to_json`] from structs whose fields are
/// named as the columns.
#[derive(Debug, Clone, Copy)]
pub struct JsonRows {
    columns: &'static [(&'static str, ColumnType)],
}

impl JsonRows {
    pub const fn new(columns: &'static [(&'static str, ColumnType)]) -> Self {
        Self { columns }
    }

    /// A row source for a FROM clause, named `alias`, reading the JSON array bound to
    /// parameter `$parameter`.
    pub fn source(&self, backend: Backend, parameter: usize, alias: &str) -> String {
        match backend {
            Backend::Postgres => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(position, (name, kind))| match kind {
                        ColumnType::Text => format!("row_values->>{position} AS {name}"),
                        ColumnType::BigInt => {
                            format!("CAST(row_values->>{position} AS BIGINT) AS {name}")
                        }
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM jsonb_array_elements(CAST(${parameter} AS JSONB)) \
                     AS row_values) AS {alias}",
                    columns.join(", ")
                )
            }
            Backend::Sqlite => {
                let columns: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(position, (name, kind))| match kind {
                        ColumnType::Text => {
                            format!("json_extract(value, '$[{position}]') AS {name}")
                        }
                        ColumnType::BigInt => format!(
                            "CAST(json_extract(value, '$[{position}]') AS INTEGER) AS {name}"
                        ),
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM json_each(${parameter})) AS {alias}",
                    columns.join(", ")
                )
            }
        }
    }

    /// The column names, each qualified by `alias`, comma-separated.
    pub fn columns(&self, alias: &str) -> String {
        self.columns
            .iter()
            .map(|(name, _)| format!("{alias}.{name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Rows serialized for this shape's parameter. Each row is a struct whose fields are named as
    /// the columns and declared in the same order; a column with no field reads as NULL, and a
    /// field with no column is left out (so a table's full row type can be written to a shape
    /// of some of its columns).
    ///
    /// # Panics
    /// When a row is not a struct, or its fields come in another order than the columns: a
    /// mistake in the row type, which any test writing that type shows.
    pub fn to_json<T: Serialize>(&self, rows: &[T]) -> String {
        let mut out = Vec::with_capacity(2 + rows.len() * self.columns.len() * 16);
        out.push(b'[');
        for (index, row) in rows.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            if let Err(error) = row.serialize(RowWriter {
                columns: self.columns,
                out: &mut out,
            }) {
                panic!(
                    "{} does not fit its JSON rows: {error}",
                    std::any::type_name::<T>()
                );
            }
        }
        out.push(b']');
        String::from_utf8(out).expect("texts are copied whole and serde_json writes UTF-8")
    }

    /// The column names, comma-separated, for an INSERT's column list.
    pub fn names(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a row could not be written.
#[derive(Debug)]
struct RowError(String);

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RowError {}

impl ser::Error for RowError {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

impl From<serde_json::Error> for RowError {
    fn from(error: serde_json::Error) -> Self {
        Self(error.to_string())
    }
}

/// Writes one struct as the JSON array of its fields' values, in the columns' positions.
struct RowWriter<'a> {
    columns: &'static [(&'static str, ColumnType)],
    out: &'a mut Vec<u8>,
}

/// The fields of one row being written; `next` is the position of the next column to fill.
struct RowFields<'a> {
    columns: &'static [(&'static str, ColumnType)],
    out: &'a mut Vec<u8>,
    next: usize,
}

impl RowFields<'_> {
    /// Writes `null` for every column before `position` that no field filled.
    fn fill_to(&mut self, position: usize) {
        while self.next < position {
            if self.next > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"null");
            self.next += 1;
        }
    }
}

impl SerializeStruct for RowFields<'_> {
    type Ok = ();
    type Error = RowError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), RowError> {
        // Fields usually come in column order, so the next column is tried first.
        let position = if self
            .columns
            .get(self.next)
            .is_some_and(|(name, _)| *name == key)
        {
            self.next
        } else {
            match self.columns.iter().position(|(name, _)| *name == key) {
                None => return Ok(()),
                Some(position) if position < self.next => {
                    return Err(RowError(format!(
                        "field `{key}` comes after column `{}`, not before it as the columns do",
                        self.columns[self.next - 1].0
                    )));
                }
                Some(position) => position,
            }
        };
        self.fill_to(position);
        if position > 0 {
            self.out.push(b',');
        }
        value.serialize(ValueWriter {
            out: &mut *self.out,
        })?;
        self.next = position + 1;
        Ok(())
    }

    fn end(mut self) -> Result<(), RowError> {
        self.fill_to(self.columns.len());
        self.out.push(b']');
        Ok(())
    }
}

/// Refuses the simple values listed, with `$why`'s error.
macro_rules! refuse {
    ($why:ident: $($method:ident($($argument:ty),*);)*) => {
        $(
            fn $method(self, $(_: $argument),*) -> Result<(), RowError> {
                Err($why())
            }
        )*
    };
}

/// Refuses every compound value but a struct, with `$why`'s error.
macro_rules! refuse_compound {
    ($why:ident) => {
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, RowError> {
            Err($why())
        }

        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, RowError> {
            Err($why())
        }

        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, RowError> {
            Err($why())
        }

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, RowError> {
            Err($why())
        }

        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, RowError> {
            Err($why())
        }

        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, RowError> {
            Err($why())
        }
    };
}

/// Writes one field's value: a text, a number, a boolean or null. Texts that need no escaping
/// (ids, codes, amounts as text: nearly all) are copied between quotes, and integers are written
/// as texts of their digits; serde_json writes the other texts and every other scalar. Escaping
/// every text through serde_json took a tenth of the server's CPU in a bench earn run.
struct ValueWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl ValueWriter<'_> {
    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut *self.out)
    }
}

/// Whether JSON must escape any of `text`'s bytes: a quote, a backslash or a control character.
/// Every byte is looked at, with no early exit, so the compiler checks many bytes per
/// instruction: nearly every text needs no escaping and is read to its end anyway.
fn needs_escaping(text: &str) -> bool {
    text.bytes().fold(false, |found, byte| {
        found | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    })
}

fn not_a_value() -> RowError {
    RowError("a row's field must be a text, a number, a boolean or null".to_owned())
}

/// Hands a scalar to serde_json's own writer.
macro_rules! through_serde_json {
    ($($method:ident($argument:ty);)*) => {
        $(
            fn $method(mut self, value: $argument) -> Result<(), RowError> {
                Ok(ser::Serializer::$method(&mut self.json(), value)?)
            }
        )*
    };
}

/// Writes an integer as a JSON text of its digits. PostgreSQL's `jsonb` reads every JSON number
/// as a `numeric` and `->>` writes it back out as text before the column's cast reads it again;
/// a text goes to the cast as it is. Both conversions took about 3% of the machine's CPU in a
/// bench earn run; each backend's row source casts the text to its integer column.
macro_rules! quoted_integers {
    ($($method:ident($argument:ty);)*) => {
        $(
            fn $method(mut self, value: $argument) -> Result<(), RowError> {
                self.out.push(b'"');
                ser::Serializer::$method(&mut self.json(), value)?;
                self.out.push(b'"');
                Ok(())
            }
        )*
    };
}

impl ser::Serializer for ValueWriter<'_> {
    type Ok = ();
    type Error = RowError;
    type SerializeSeq = Impossible<(), RowError>;
    type SerializeTuple = Impossible<(), RowError>;
    type SerializeTupleStruct = Impossible<(), RowError>;
    type SerializeTupleVariant = Impossible<(), RowError>;
    type SerializeMap = Impossible<(), RowError>;
    type SerializeStruct = Impossible<(), RowError>;
    type SerializeStructVariant = Impossible<(), RowError>;

    fn serialize_str(mut self, value: &str) -> Result<(), RowError> {
        if needs_escaping(value) {
            return Ok(ser::Serializer::serialize_str(&mut self.json(), value)?);
        }
        self.out.reserve(value.len() + 2);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    through_serde_json! {
        serialize_bool(bool);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
    }

    quoted_integers! {
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
    }

    fn serialize_none(self) -> Result<(), RowError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), RowError> {
        self.serialize_none()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), RowError> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), RowError> {
        value.serialize(self)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), RowError> {
        self.serialize_str(variant)
    }

    refuse! { not_a_value:
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), RowError> {
        Err(not_a_value())
    }

    refuse_compound!(not_a_value);

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, RowError> {
        Err(not_a_value())
    }
}

fn not_a_struct() -> RowError {
    RowError("a row must be a struct with named fields".to_owned())
}

impl<'a> ser::Serializer for RowWriter<'a> {
    type Ok = ();
    type Error = RowError;
    type SerializeSeq = Impossible<(), RowError>;
    type SerializeTuple = Impossible<(), RowError>;
    type SerializeTupleStruct = Impossible<(), RowError>;
    type SerializeTupleVariant = Impossible<(), RowError>;
    type SerializeMap = Impossible<(), RowError>;
    type SerializeStruct = RowFields<'a>;
    type SerializeStructVariant = Impossible<(), RowError>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<RowFields<'a>, RowError> {
        self.out.push(b'[');
        Ok(RowFields {
            columns: self.columns,
            out: self.out,
            next: 0,
        })
    }

    // Anything but a struct is refused: a row's values are found by their fields' names.
    refuse! { not_a_struct:
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), RowError> {
        Err(not_a_struct())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), RowError> {
        Err(not_a_struct())
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), RowError> {
        Err(not_a_struct())
    }

    refuse_compound!(not_a_struct);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: JsonRows = JsonRows::new(&[
        ("id", ColumnType::Text),
        ("n", ColumnType::BigInt),
        ("note", ColumnType::Text),
    ]);

    #[test]
    fn each_backend_reads_the_same_columns() {
        assert_eq!(
            SHAPE.source(Backend::Postgres, 2, "r"),
            "(SELECT row_values->>0 AS id, CAST(row_values->>1 AS BIGINT) AS n, \
             row_values->>2 AS note FROM jsonb_array_elements(CAST($2 AS JSONB)) \
             AS row_values) AS r"
        );
        assert_eq!(
            SHAPE.source(Backend::Sqlite, 1, "r"),
            "(SELECT json_extract(value, '$[0]') AS id, \
             CAST(json_extract(value, '$[1]') AS INTEGER) AS n, \
             json_extract(value, '$[2]') AS note FROM json_each($1)) AS r"
        );
        assert_eq!(SHAPE.columns("r"), "r.id, r.n, r.note");
        assert_eq!(SHAPE.names(), "id, n, note");
    }

    #[derive(Serialize)]
    struct Full<'a> {
        id: &'a str,
        n: Option<i64>,
        note: &'a str,
    }

    /// A table's row type with a column the shape leaves out, and without the shape's `n`.
    #[derive(Serialize)]
    struct Wider {
        id: String,
        updated_at: i64,
        note: String,
    }

    #[derive(Serialize)]
    struct Reordered {
        n: i64,
        id: String,
    }

    #[test]
    fn rows_are_arrays_in_column_order() {
        let rows = [
            Full {
                id: "a\"b",
                n: Some(-7),
                note: "",
            },
            Full {
                id: "c",
                n: None,
                note: "✈",
            },
        ];
        assert_eq!(SHAPE.to_json(&rows), r#"[["a\"b","-7",""],["c",null,"✈"]]"#);
        assert_eq!(SHAPE.to_json::<Full<'_>>(&[]), "[]");
    }

    #[test]
    fn a_column_without_a_field_is_null_and_a_field_without_a_column_is_left_out() {
        let row = Wider {
            id: "x".to_owned(),
            updated_at: 5,
            note: "y".to_owned(),
        };
        assert_eq!(SHAPE.to_json(&[row]), r#"[["x",null,"y"]]"#);
    }

    #[test]
    #[should_panic(expected = "field `id` comes after column `n`")]
    fn fields_out_of_column_order_are_a_mistake_in_the_row_type() {
        SHAPE.to_json(&[Reordered {
            n: 1,
            id: "x".to_owned(),
        }]);
    }

    /// A row of one text column.
    #[derive(Serialize)]
    struct Note<'a> {
        note: &'a str,
    }

    #[test]
    fn texts_read_back_as_written_whether_or_not_they_need_escaping() {
        let shape = JsonRows::new(&[("note", ColumnType::Text)]);
        for text in [
            "",
            "01a2093b-6f9d-727d-8202-7c69826a30fa",
            "Zoë's 旅行 ✈ \u{1F697} \u{7F}",
            "quote \" backslash \\ new line \n tab \t bell \u{7}",
            "\"",
            "\\",
        ] {
            let json = shape.to_json(&[Note { note: text }]);
            let expected = format!("[[{}]]", serde_json::to_string(text).unwrap());
            assert_eq!(json, expected, "{text:?}");
            let read: Vec<Vec<String>> = serde_json::from_str(&json).unwrap();
            assert_eq!(read, [[text]]);
        }
    }

    #[derive(Serialize)]
    struct Code(String);

    #[derive(Serialize)]
    enum Phase {
        Posted,
    }

    #[derive(Serialize)]
    struct Scalars {
        id: Code,
        n: Option<u32>,
        note: Phase,
        flag: bool,
    }

    #[test]
    fn newtypes_options_and_unit_variants_are_their_values() {
        let shape = JsonRows::new(&[
            ("id", ColumnType::Text),
            ("n", ColumnType::BigInt),
            ("note", ColumnType::Text),
            ("flag", ColumnType::BigInt),
        ]);
        let row = Scalars {
            id: Code("c-1".to_owned()),
            n: Some(u32::MAX),
            note: Phase::Posted,
            flag: true,
        };
        assert_eq!(
            shape.to_json(&[row]),
            r#"[["c-1","4294967295","Posted",true]]"#
        );
    }

    #[derive(Serialize)]
    struct Nested {
        id: Vec<i64>,
    }

    #[test]
    #[should_panic(expected = "a row's field must be a text, a number, a boolean or null")]
    fn a_field_holding_a_list_is_a_mistake_in_the_row_type() {
        SHAPE.to_json(&[Nested { id: vec![1] }]);
    }
}
