//! Writing ClueGetter's quota rows (`check-workers quota import`): every table in one
//! transaction, parents first. Reading and validating the dump is [`super::super::import`]'s.

use sqlx::{MySql, QueryBuilder};

use super::super::import::{ImportTable, Table};
use super::QuotaStore;

impl QuotaStore {
    /// inserted per table.
    ///
    /// # Errors
    /// A row the database refuses (a duplicate id, a reference to a missing row, a value that
    /// does not fit); nothing is inserted then. The error names the table and the row's line.
    pub async fn import(&self, tables: &[ImportTable]) -> Result<Vec<(Table, u64)>, ImportError> {
        let mut ordered: Vec<&ImportTable> = tables.iter().collect();
        ordered.sort_by_key(|t| t.table);
        let mut tx = self.pool().begin().await.map_err(ImportError::Database)?;
        let mut counts = Vec::new();
        for table in ordered {
            let mut inserted = 0;
            for row in &table.rows {
                let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
                insert.push(table.table.as_str()).push(" (");
                let mut columns = insert.separated(", ");
                for column in &table.columns {
                    columns.push(*column);
                }
                insert.push(") VALUES (");
                let mut values = insert.separated(", ");
                for value in &row.values {
                    values.push_bind(value.clone());
                }
                insert.push(")");
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| ImportError::Row {
                        table: table.table,
                        line: row.line,
                        source,
                    })?;
                inserted += 1;
            }
            counts.push((table.table, inserted));
        }
        tx.commit().await.map_err(ImportError::Database)?;
        Ok(counts)
    }
}

/// Why an import stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("table {table}, line {line}: the database refused the row")]
    Row {
        table: Table,
        line: usize,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot write the rows")]
    Database(#[source] sqlx::Error),
}
