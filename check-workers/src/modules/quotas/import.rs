//! Reading ClueGetter's quota rows as people have them: the `mysql` client's output, boxed
//! (as in ClueGetter's README) or tab-separated (`mysql --batch`), one section per table:
//!
//! ```text
//! quota_class:
//! +----+----------+--------------------+
//! | id | instance | name               |
//! +----+----------+--------------------+
//! |  1 |        1 | Paying Customers   |
//! +----+----------+--------------------+
//! ```
//!
//! A section starts with a line naming the table (`quota:`, `quota_profile:`, `quota_class:`,
//! `quota_profile_period:`); its first row names the columns, by ClueGetter's names (`instance`
//! is taken for `quota_class.cluegetter_instance`, as the README writes it). Columns a section
//! leaves out get the table's defaults (`quota.date_added`: now; `is_regex`: 0; `instigator`:
//! NULL). `NULL` is SQL NULL. Regex rows must compile. Pure: nothing here touches the database
//! ([`super::store::QuotaStore::import`] writes the rows).

use std::fmt;

use regex::Regex;

/// The tables that can be imported, parents first (the order rows are inserted in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    QuotaClass,
    QuotaProfile,
    QuotaProfilePeriod,
    Quota,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::QuotaClass,
        Table::QuotaProfile,
        Table::QuotaProfilePeriod,
        Table::Quota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::QuotaClass => "quota_class",
            Table::QuotaProfile => "quota_profile",
            Table::QuotaProfilePeriod => "quota_profile_period",
            Table::Quota => "quota",
        }
    }

    /// The columns a section may name, and the ones it must.
    fn columns(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Table::QuotaClass => (
                &["id", "cluegetter_instance", "name"],
                &["cluegetter_instance", "name"],
            ),
            Table::QuotaProfile => (&["id", "class", "name"], &["class", "name"]),
            Table::QuotaProfilePeriod => (
                &["id", "profile", "period", "curb"],
                &["profile", "period", "curb"],
            ),
            Table::Quota => (
                &[
                    "id",
                    "selector",
                    "value",
                    "is_regex",
                    "profile",
                    "instigator",
                    "date_added",
                ],
                &["selector", "value", "profile"],
            ),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One table's rows as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportTable {
    pub table: Table,
    /// Canonical column names, in the section's order.
    pub columns: Vec<&'static str>,
    pub rows: Vec<ImportRow>,
}

/// One row: a value per column (`None` for NULL) and where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line number in the input.
    pub line: usize,
    pub values: Vec<Option<String>>,
}

/// What is wrong with the input, with its line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Reads every section of the input.
///
/// # Errors
/// A line outside a table that is not a section name, an unknown table or column, a missing
/// required column, a row with the wrong number of cells, a table named twice, a regex row that
/// does not compile, or no rows at all.
pub fn parse(text: &str) -> Result<Vec<ImportTable>, ParseError> {
    let mut tables: Vec<ImportTable> = Vec::new();
    // The section being read; `None` before the first section name.
    let mut current: Option<(Table, Option<Vec<&'static str>>)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |reason: String| ParseError {
            line: line_number,
            reason,
        };
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('+') || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_suffix(':')
            && !name.contains(['|', '\t'])
        {
            let table = Table::ALL
                .into_iter()
                .find(|t| t.as_str() == name.trim())
                .ok_or_else(|| {
                    error(format!(
                        "unknown table `{}` (known: quota_class, quota_profile, quota_profile_period, quota)",
                        name.trim()
                    ))
                })?;
            if tables.iter().any(|t| t.table == table) {
                return Err(error(format!("table {table} appears twice")));
            }
            current = Some((table, None));
            tables.push(ImportTable {
                table,
                columns: Vec::new(),
                rows: Vec::new(),
            });
            continue;
        }
        let Some((table, header)) = current.as_mut() else {
            return Err(error(
                "expected a table name such as `quota:` before the rows".to_owned(),
            ));
        };
        let cells = cells(line).ok_or_else(|| {
            error("expected a table row (`| a | b |`, or tab-separated cells)".to_owned())
        })?;
        let Some(columns) = header else {
            let columns = header_columns(*table, &cells).map_err(error)?;
            if let Some(last) = tables.last_mut() {
                last.columns.clone_from(&columns);
            }
            *header = Some(columns);
            continue;
        };
        if cells.len() != columns.len() {
            return Err(error(format!(
                "{} cells, but {table} has {} columns here",
                cells.len(),
                columns.len()
            )));
        }
        let values: Vec<Option<String>> = cells
            .into_iter()
            .map(|cell| (!cell.eq_ignore_ascii_case("NULL")).then(|| cell.to_owned()))
            .collect();
        check_row(*table, columns, &values).map_err(error)?;
        if let Some(last) = tables.last_mut() {
            last.rows.push(ImportRow {
                line: line_number,
                values,
            });
        }
    }
    if tables.iter().all(|t| t.rows.is_empty()) {
        return Err(ParseError {
            line: text.lines().count(),
            reason: "no rows found (expected sections such as `quota:` followed by a table)"
                .to_owned(),
        });
    }
    Ok(tables)
}

/// The cells of a boxed (`| a | b |`) or tab-separated row, trimmed.
fn cells(line: &str) -> Option<Vec<&str>> {
    let trimmed = line.trim();
    if let Some(inner) = trimmed.strip_prefix('|') {
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        return Some(inner.split('|').map(str::trim).collect());
    }
    if line.contains('\t') {
        return Some(line.split('\t').map(str::trim).collect());
    }
    None
}

/// The header row's columns, canonical; every required column present, none twice.
fn header_columns(table: Table, cells: &[&str]) -> Result<Vec<&'static str>, String> {
    let (known, required) = table.columns();
    let mut columns: Vec<&'static str> = Vec::with_capacity(cells.len());
    for cell in cells {
        let name = if table == Table::QuotaClass && cell.eq_ignore_ascii_case("instance") {
            "cluegetter_instance"
        } else {
            known
                .iter()
                .copied()
                .find(|k| k.eq_ignore_ascii_case(cell))
                .ok_or_else(|| {
                    format!(
                        "{table} has no column `{cell}` (columns: {})",
                        known.join(", ")
                    )
                })?
        };
        if columns.contains(&name) {
            return Err(format!("column `{name}` of {table} is named twice"));
        }
        columns.push(name);
    }
    for name in required {
        if !columns.contains(name) {
            return Err(format!("{table} needs the column `{name}`"));
        }
    }
    Ok(columns)
}

/// What can be said of a row before the database sees it: a regex row must compile.
fn check_row(table: Table, columns: &[&str], values: &[Option<String>]) -> Result<(), String> {
    if table != Table::Quota {
        return Ok(());
    }
    let cell = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .and_then(|n| values.get(n))
            .and_then(Option::as_deref)
    };
    let is_regex = cell("is_regex").is_some_and(|v| v != "0" && !v.is_empty());
    if is_regex {
        let pattern = cell("value").ok_or_else(|| "a regex quota needs a value".to_owned())?;
        Regex::new(pattern).map_err(|e| format!("regex `{pattern}` does not compile: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// ClueGetter's README, as written (its `quota_profile` header box is one cell short).
    const README_JOHN_AND_JANE: &str = "\
quota:
+-----+----------------+----------------+----------+---------+------------+
| id  | selector       | value          | is_regex | profile | instigator |
+-----+----------------+----------------+----------+---------+------------+
|   1 | sasl_username  | john@doe.com   |        0 |       1 |       NULL |
|   2 | sasl_username  | jane@doe.com   |        0 |       2 |       NULL |
+-----+----------------+----------------+----------+---------+------------+

quota_profile:
+----+----------------------------+
| id | class | name               |
+----+----------------------------+
|  1 |     1 | small-sasl         |
|  2 |     1 | large-sasl         |
+----+----------------------------+

quota_class:
+----+-------------------------------+
| id | instance | name               |
+----+-------------------------------+
|  1 |        1 | Paying Customers   |
+----+-------------------------------+

quota_profile_period:
+----+---------+--------+-------+
| id | profile | period | curb  |
+----+---------+--------+-------+
|  1 |       1 |  86400 |   150 |
|  2 |       2 |    300 |   500 |
|  3 |       2 |  86400 | 10000 |
+----+---------+--------+-------+
";

    #[test]
    fn the_readme_tables_parse_as_written() {
        let tables = parse(README_JOHN_AND_JANE).unwrap();
        assert_eq!(tables.len(), 4);
        let quota = &tables[0];
        assert_eq!(quota.table, Table::Quota);
        assert_eq!(
            quota.columns,
            [
                "id",
                "selector",
                "value",
                "is_regex",
                "profile",
                "instigator"
            ]
        );
        assert_eq!(quota.rows.len(), 2);
        assert_eq!(quota.rows[0].line, 5);
        assert_eq!(
            quota.rows[1].values,
            [
                Some("2".to_owned()),
                Some("sasl_username".to_owned()),
                Some("jane@doe.com".to_owned()),
                Some("0".to_owned()),
                Some("2".to_owned()),
                None
            ]
        );
        let class = tables
            .iter()
            .find(|t| t.table == Table::QuotaClass)
            .unwrap();
        assert_eq!(class.columns, ["id", "cluegetter_instance", "name"]);
        assert_eq!(class.rows[0].values[2].as_deref(), Some("Paying Customers"));
    }

    #[test]
    fn tab_separated_batch_output_parses() {
        let text = "quota_profile_period:\nid\tprofile\tperiod\tcurb\n1\t1\t86400\t150\n";
        let tables = parse(text).unwrap();
        assert_eq!(tables[0].rows[0].values[3].as_deref(), Some("150"));
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases = [
            ("| 1 | x |\n", 1, "table name"),
            ("quotas:\n", 1, "unknown table `quotas`"),
            (
                "quota:\n| id | selector | valeu | profile |\n",
                2,
                "no column `valeu`",
            ),
            (
                "quota:\n| id | selector | profile |\n",
                2,
                "needs the column `value`",
            ),
            (
                "quota_profile:\n| id | class | name |\n| 1 | 1 |\n",
                3,
                "2 cells",
            ),
            (
                "quota:\n| selector | value | is_regex | profile |\n| client_address | ^(.*$ | 1 | 4 |\n",
                3,
                "does not compile",
            ),
            ("quota:\n| selector | value | profile |\n", 2, "no rows"),
            ("quota:\nsome prose\n", 2, "expected a table row"),
        ];
        for (text, line, reason) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        }
    }
}
