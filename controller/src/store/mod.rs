//! Embedded SQLite storage: one file, one connection behind a mutex.
//!
//! Callers run a closure in one transaction on a blocking thread ([`Store::run`]), so a
//! read-modify-write of a node is atomic and never blocks the async runtime. All SQL lives here.

mod migrations;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Transaction};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::fsm::ProvisionState;
use crate::model::{HistoryEvent, JsonObject, Node, Port, StoredInventory};

pub use migrations::MIGRATIONS;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this controller's {supported}")]
    SchemaTooNew { found: usize, supported: usize },
    #[error("migration {version} failed")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored row of {table} does not decode")]
    Decode {
        table: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unique constraint failed on {column}")]
    Duplicate { column: String },
    #[error("database worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let connection =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        // In WAL mode NORMAL syncs at checkpoints rather than on every commit: a power cut may lose
        // the last commits but never corrupts the file, and each write stops costing an fsync.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Self::from_connection(connection)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut connection: Connection) -> Result<Store, StoreError> {
        connection.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut connection)?;
        Ok(Store { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `work` in one transaction, committed if it returns `Ok`, rolled back otherwise.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut guard = connection.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = Tx(guard.transaction().map_err(StoreError::from)?);
            let value = work(&tx)?;
            tx.0.commit().map_err(StoreError::from)?;
            Ok(value)
        })
        .await
        .map_err(|error| E::from(StoreError::Worker(error)))?
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        let connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        user_version(&connection)
    }
}

fn user_version(connection: &Connection) -> Result<usize, StoreError> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    Ok(usize::try_from(version).unwrap_or(0))
}

/// Applies the migrations the file lacks, all in one transaction with the version bump.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction()?;
    let found = user_version(&tx)?;
    if found > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew { found, supported: MIGRATIONS.len() });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        let version = index + 1;
        tx.execute_batch(sql).map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "applied database migration");
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

/// Node columns holding JSON objects, and those holding booleans (SQLite integers).
const NODE_JSON_COLUMNS: &[&str] = &[
    "properties",
    "instance_info",
    "driver_info",
    "driver_internal_info",
    "extra",
    "deploy_step",
    "clean_step",
    "network_data",
    "interfaces",
];
const NODE_BOOL_COLUMNS: &[&str] =
    &["maintenance", "secure_boot", "automated_clean", "console_enabled", "protected", "retired", "disable_power_off"];

/// Filters of a node listing.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    pub provision_state: Option<ProvisionState>,
    pub driver: Option<String>,
    pub maintenance: Option<bool>,
    pub associated: Option<bool>,
    pub resource_class: Option<String>,
    /// Column to order by, one of [`NODE_SORT_KEYS`] (the only text put into the SQL); `None` is creation order.
    pub sort_key: Option<&'static str>,
    pub descending: bool,
    /// Only nodes after this one in the chosen order (pagination).
    pub marker: Option<String>,
    pub limit: Option<usize>,
}

/// Filters and page of a port listing.
#[derive(Debug, Clone, Default)]
pub struct PortQuery {
    pub node_uuid: Option<String>,
    pub address: Option<String>,
    /// One of [`PORT_SORT_KEYS`]; `None` is creation order.
    pub sort_key: Option<&'static str>,
    pub descending: bool,
    /// Only ports after this one in the chosen order.
    pub marker: Option<String>,
    pub limit: Option<usize>,
}

/// Port columns a listing may be sorted by.
pub const PORT_SORT_KEYS: &[&str] = &["id", "uuid", "address", "node_uuid", "pxe_enabled", "created_at", "updated_at"];

/// Node columns a listing may be sorted by, as Ironic allows (not the JSON ones).
pub const NODE_SORT_KEYS: &[&str] = &[
    "id",
    "uuid",
    "name",
    "created_at",
    "updated_at",
    "provision_state",
    "target_provision_state",
    "provision_updated_at",
    "power_state",
    "target_power_state",
    "driver",
    "maintenance",
    "maintenance_reason",
    "resource_class",
    "instance_uuid",
    "chassis_uuid",
    "conductor_group",
    "reservation",
    "last_error",
    "fault",
    "owner",
    "lessee",
    "description",
    "shard",
    "parent_node",
    "boot_mode",
    "secure_boot",
    "console_enabled",
    "automated_clean",
    "protected",
    "retired",
    "disable_power_off",
];

/// `SELECT * FROM table` with `conditions`, ordered by `sort_key` (NULLs first, `id` breaking
/// ties; `None` is `id`) and starting after the row with UUID `marker`. The order is one row
/// value, so the marker condition is a single comparison in the same order. `sort_key` is
/// put into the SQL as is: it must come from a fixed list of columns.
/// `WHERE` conditions of a listing and the values they bind, numbered in order.
#[derive(Default)]
struct Filters {
    conditions: Vec<String>,
    values: Vec<SqlValue>,
}

impl Filters {
    /// Adds `column = value` when a value is given.
    fn equal(&mut self, column: &str, value: Option<impl Into<SqlValue>>) {
        if let Some(value) = value {
            self.values.push(value.into());
            self.conditions.push(format!("{column} = ?{}", self.values.len()));
        }
    }
}

fn paged_select(
    table: &str,
    mut conditions: Vec<String>,
    values: &mut Vec<SqlValue>,
    sort_key: Option<&'static str>,
    descending: bool,
    marker: Option<&str>,
    limit: Option<usize>,
) -> String {
    let order: Vec<String> = match sort_key.filter(|key| *key != "id") {
        Some(key) => vec![format!("{key} IS NOT NULL"), format!("IFNULL({key}, 0)"), "id".to_owned()],
        None => vec!["id".to_owned()],
    };
    let (direction, after) = if descending { ("DESC", "<") } else { ("ASC", ">") };
    if let Some(marker) = marker {
        values.push(SqlValue::Text(marker.to_owned()));
        let columns = order.join(", ");
        conditions.push(format!("({columns}) {after} (SELECT {columns} FROM {table} WHERE uuid = ?{})", values.len()));
    }
    let mut sql = format!("SELECT * FROM {table}");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let ordering: Vec<String> = order.iter().map(|term| format!("{term} {direction}")).collect();
    sql.push_str(&format!(" ORDER BY {}", ordering.join(", ")));
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    sql
}

/// The outcome of [`Tx::reserve_node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Granted,
    /// Another holder's unexpired reservation, named by its conductor.
    HeldBy(String),
    NoSuchNode,
}

/// An open transaction with the controller's queries.
pub struct Tx<'conn>(Transaction<'conn>);

impl Tx<'_> {
    pub fn insert_node(&self, node: &Node) -> Result<(), StoreError> {
        self.insert_row("nodes", node)
    }

    /// Inserts `record` into `table`, one column per serialised field.
    fn insert_row(&self, table: &'static str, record: &impl Serialize) -> Result<(), StoreError> {
        let columns = columns(table, record)?;
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let sql = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), placeholders.join(", "));
        let values: Vec<SqlValue> = columns.into_iter().map(|(_, value)| value).collect();
        self.0.execute(&sql, rusqlite::params_from_iter(values)).map_err(constraint_error)?;
        Ok(())
    }

    /// Writes every field of `node` (found by uuid).
    pub fn update_node(&self, node: &Node) -> Result<(), StoreError> {
        self.update_row("nodes", &node.uuid, node)
    }

    /// Writes every field of `port` (found by uuid).
    pub fn update_port(&self, port: &Port) -> Result<(), StoreError> {
        self.update_row("ports", &port.uuid, port)
    }

    fn update_row(&self, table: &'static str, uuid: &str, record: &impl Serialize) -> Result<(), StoreError> {
        let columns = columns(table, record)?;
        let assignments: Vec<String> =
            columns.iter().enumerate().map(|(i, (name, _))| format!("{name} = ?{}", i + 1)).collect();
        let sql = format!("UPDATE {table} SET {} WHERE uuid = ?{}", assignments.join(", "), columns.len() + 1);
        let mut values: Vec<SqlValue> = columns.into_iter().map(|(_, value)| value).collect();
        values.push(SqlValue::Text(uuid.to_owned()));
        self.0.execute(&sql, rusqlite::params_from_iter(values)).map_err(constraint_error)?;
        Ok(())
    }

    /// Writes only what a heartbeat records: the agent's report in `driver_internal_info`,
    /// `provision_updated_at` (refreshed while the node waits for its agent) and `updated_at`.
    pub fn update_heartbeat_fields(&self, node: &Node) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE nodes SET driver_internal_info = ?1, provision_updated_at = ?2, updated_at = ?3 WHERE uuid = ?4",
            params![
                Value::Object(node.driver_internal_info.clone()).to_string(),
                node.provision_updated_at,
                node.updated_at,
                node.uuid,
            ],
        )?;
        Ok(())
    }

    /// Reserves a node for `owner` until `expires_at`, unless someone holds an unexpired
    /// reservation; an expired one is taken over. Times are [`crate::model::timestamp`]s.
    pub fn reserve_node(
        &self,
        uuid: &str,
        owner: &str,
        now: &str,
        expires_at: &str,
    ) -> Result<Reservation, StoreError> {
        let taken = self.0.execute(
            "UPDATE nodes SET reservation = ?2, reservation_expires_at = ?4 WHERE uuid = ?1
             AND (reservation IS NULL OR reservation_expires_at IS NULL OR reservation_expires_at <= ?3)",
            params![uuid, owner, now, expires_at],
        )?;
        if taken > 0 {
            return Ok(Reservation::Granted);
        }
        let holder: Option<String> = self
            .0
            .query_row("SELECT reservation FROM nodes WHERE uuid = ?1", params![uuid], |row| row.get(0))
            .optional()?
            .flatten();
        Ok(holder.map_or(Reservation::NoSuchNode, Reservation::HeldBy))
    }

    /// Moves the expiry of the reservation [`Tx::reserve_node`] granted to `new_expires_at`, if it is
    /// still that one (not taken over); whether it was.
    pub fn renew_reservation(
        &self,
        uuid: &str,
        owner: &str,
        expires_at: &str,
        new_expires_at: &str,
    ) -> Result<bool, StoreError> {
        let renewed = self.0.execute(
            "UPDATE nodes SET reservation_expires_at = ?4
             WHERE uuid = ?1 AND reservation = ?2 AND reservation_expires_at = ?3",
            params![uuid, owner, expires_at, new_expires_at],
        )?;
        Ok(renewed > 0)
    }

    /// Ends the reservation [`Tx::reserve_node`] granted, if it is still that one (not taken over).
    pub fn release_node(&self, uuid: &str, owner: &str, expires_at: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE nodes SET reservation = NULL, reservation_expires_at = NULL
             WHERE uuid = ?1 AND reservation = ?2 AND reservation_expires_at = ?3",
            params![uuid, owner, expires_at],
        )?;
        Ok(())
    }

    /// Whether the reservation [`Tx::reserve_node`] granted still stands (not expired and taken over).
    pub fn holds_reservation(&self, uuid: &str, owner: &str, expires_at: &str) -> Result<bool, StoreError> {
        let count: i64 = self.0.query_row(
            "SELECT COUNT(*) FROM nodes WHERE uuid = ?1 AND reservation = ?2 AND reservation_expires_at = ?3",
            params![uuid, owner, expires_at],
            |row| row.get(0),
        )?;
        Ok(count > 0)
    }

    /// Ends every reservation `owner` holds: a starting controller finished none of them.
    pub fn release_reservations_of(&self, owner: &str) -> Result<usize, StoreError> {
        Ok(self.0.execute(
            "UPDATE nodes SET reservation = NULL, reservation_expires_at = NULL WHERE reservation = ?1",
            params![owner],
        )?)
    }

    /// Nodes whose reservation `owner` holds.
    pub fn nodes_reserved_by(&self, owner: &str) -> Result<Vec<Node>, StoreError> {
        self.query_nodes("SELECT * FROM nodes WHERE reservation = ?1 ORDER BY id", params![owner])
    }

    pub fn node_by_uuid(&self, uuid: &str) -> Result<Option<Node>, StoreError> {
        self.query_nodes("SELECT * FROM nodes WHERE uuid = ?1", params![uuid]).map(|mut nodes| nodes.pop())
    }

    pub fn node_by_name(&self, name: &str) -> Result<Option<Node>, StoreError> {
        self.query_nodes("SELECT * FROM nodes WHERE name = ?1", params![name]).map(|mut nodes| nodes.pop())
    }

    pub fn list_nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, StoreError> {
        let mut filters = Filters::default();
        filters.equal("provision_state", query.provision_state.map(|state| state.as_str().to_owned()));
        filters.equal("driver", query.driver.clone());
        filters.equal("maintenance", query.maintenance.map(i64::from));
        if let Some(associated) = query.associated {
            filters
                .conditions
                .push(if associated { "instance_uuid IS NOT NULL" } else { "instance_uuid IS NULL" }.to_owned());
        }
        filters.equal("resource_class", query.resource_class.clone());
        let Filters { conditions, mut values } = filters;
        let sql = paged_select(
            "nodes",
            conditions,
            &mut values,
            query.sort_key,
            query.descending,
            query.marker.as_deref(),
            query.limit,
        );
        self.query_nodes(&sql, rusqlite::params_from_iter(values))
    }

    /// Nodes in `state` whose provision state was last touched before `cutoff` (a [`crate::model::timestamp`]).
    pub fn nodes_in_state_since(&self, state: ProvisionState, cutoff: &str) -> Result<Vec<Node>, StoreError> {
        self.query_nodes(
            "SELECT * FROM nodes WHERE provision_state = ?1 AND provision_updated_at < ?2 ORDER BY id",
            params![state.as_str(), cutoff],
        )
    }

    /// Deletes a node with its ports, history and inventory.
    pub fn delete_node(&self, uuid: &str) -> Result<bool, StoreError> {
        Ok(self.0.execute("DELETE FROM nodes WHERE uuid = ?1", params![uuid])? > 0)
    }

    /// The nodes owning ports with any of these (normalised) addresses.
    pub fn nodes_by_port_addresses(&self, addresses: &[String]) -> Result<Vec<Node>, StoreError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=addresses.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT * FROM nodes WHERE uuid IN (SELECT node_uuid FROM ports WHERE address IN ({})) ORDER BY id",
            placeholders.join(", ")
        );
        self.query_nodes(&sql, rusqlite::params_from_iter(addresses))
    }

    fn query_nodes(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Node>, StoreError> {
        self.query_rows("nodes", NODE_JSON_COLUMNS, NODE_BOOL_COLUMNS, sql, params)
    }

    /// Runs `sql` over `table` and decodes each row (JSON text and 0/1 columns restored) into `T`.
    fn query_rows<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        json_columns: &[&str],
        bool_columns: &[&str],
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let rows = statement.query_map(params, |row| Ok(row_to_object(row, table, json_columns, bool_columns)))?;
        let mut records = Vec::new();
        for row in rows {
            let object = row??;
            records.push(
                serde_json::from_value(Value::Object(object)).map_err(|source| StoreError::Decode { table, source })?,
            );
        }
        Ok(records)
    }

    pub fn insert_port(&self, port: &Port) -> Result<(), StoreError> {
        self.insert_row("ports", port)
    }

    pub fn port_by_uuid(&self, uuid: &str) -> Result<Option<Port>, StoreError> {
        self.query_ports("SELECT * FROM ports WHERE uuid = ?1", params![uuid]).map(|mut ports| ports.pop())
    }

    /// Ports, optionally only a node's or only one address, oldest first.
    pub fn list_ports(&self, node_uuid: Option<&str>, address: Option<&str>) -> Result<Vec<Port>, StoreError> {
        self.query_ports(
            "SELECT * FROM ports WHERE (?1 IS NULL OR node_uuid = ?1) AND (?2 IS NULL OR address = ?2) ORDER BY id",
            params![node_uuid, address],
        )
    }

    pub fn list_ports_page(&self, query: &PortQuery) -> Result<Vec<Port>, StoreError> {
        let mut filters = Filters::default();
        filters.equal("node_uuid", query.node_uuid.clone());
        filters.equal("address", query.address.clone());
        let Filters { conditions, mut values } = filters;
        let sql = paged_select(
            "ports",
            conditions,
            &mut values,
            query.sort_key,
            query.descending,
            query.marker.as_deref(),
            query.limit,
        );
        self.query_ports(&sql, rusqlite::params_from_iter(values))
    }

    pub fn delete_port(&self, uuid: &str) -> Result<bool, StoreError> {
        Ok(self.0.execute("DELETE FROM ports WHERE uuid = ?1", params![uuid])? > 0)
    }

    fn query_ports(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Port>, StoreError> {
        self.query_rows("ports", &["extra"], &["pxe_enabled"], sql, params)
    }

    pub fn insert_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        self.insert_row("node_history", event)
    }

    /// A node's history, oldest first.
    pub fn history(&self, node_uuid: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        self.query_rows(
            "node_history",
            &[],
            &[],
            "SELECT * FROM node_history WHERE node_uuid = ?1 ORDER BY id",
            params![node_uuid],
        )
    }

    /// Stores (replacing) a node's inventory.
    pub fn put_inventory(&self, node_uuid: &str, inventory: &Value, created_at: &str) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO node_inventory (node_uuid, inventory, plugin_data, created_at) VALUES (?1, ?2, '{}', ?3)
             ON CONFLICT (node_uuid) DO UPDATE SET inventory = excluded.inventory, created_at = excluded.created_at",
            params![node_uuid, inventory.to_string(), created_at],
        )?;
        Ok(())
    }

    pub fn inventory(&self, node_uuid: &str) -> Result<Option<StoredInventory>, StoreError> {
        let row = self
            .0
            .query_row(
                "SELECT inventory, plugin_data FROM node_inventory WHERE node_uuid = ?1",
                params![node_uuid],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()?;
        row.map(|(inventory, plugin_data)| {
            let decode = |text: &str| {
                serde_json::from_str(text).map_err(|source| StoreError::Decode { table: "node_inventory", source })
            };
            Ok(StoredInventory { inventory: decode(&inventory)?, plugin_data: decode(&plugin_data)? })
        })
        .transpose()
    }
}

/// A record's fields as (column, SQL value) pairs, from its serde form.
fn columns(table: &'static str, record: &impl Serialize) -> Result<Vec<(String, SqlValue)>, StoreError> {
    let Value::Object(fields) = serde_json::to_value(record).map_err(|source| StoreError::Decode { table, source })?
    else {
        unreachable!("a struct serialises to a JSON object");
    };
    Ok(fields.into_iter().map(|(name, value)| (name, to_sql(value))).collect())
}

fn to_sql(value: Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(flag) => SqlValue::Integer(flag.into()),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => SqlValue::Integer(integer),
            None => SqlValue::Real(number.as_f64().unwrap_or_default()),
        },
        Value::String(text) => SqlValue::Text(text),
        nested @ (Value::Array(_) | Value::Object(_)) => SqlValue::Text(nested.to_string()),
    }
}

/// A row as a JSON object keyed by column name (without the internal `id`), decoding the
/// named JSON and boolean columns, ready for serde.
fn row_to_object(
    row: &Row<'_>,
    table: &'static str,
    json_columns: &[&str],
    bool_columns: &[&str],
) -> Result<JsonObject, StoreError> {
    let statement = row.as_ref();
    let mut object = Map::new();
    for (index, name) in statement.column_names().into_iter().enumerate() {
        if name == "id" {
            continue;
        }
        let value = match row.get_ref(index)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(integer) if bool_columns.contains(&name) => Value::Bool(integer != 0),
            ValueRef::Integer(integer) => Value::from(integer),
            ValueRef::Real(real) => Value::from(real),
            ValueRef::Text(text) if json_columns.contains(&name) => {
                serde_json::from_slice(text).map_err(|source| StoreError::Decode { table, source })?
            }
            ValueRef::Text(text) => Value::String(String::from_utf8_lossy(text).into_owned()),
            ValueRef::Blob(_) => Value::Null,
        };
        object.insert(name.to_owned(), value);
    }
    Ok(object)
}

/// Turns a UNIQUE violation into [`StoreError::Duplicate`] naming the column (`nodes.name`).
fn constraint_error(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, Some(message)) = &error {
        if failure.code == ErrorCode::ConstraintViolation {
            if let Some(column) = message.strip_prefix("UNIQUE constraint failed: ") {
                return StoreError::Duplicate { column: column.to_owned() };
            }
        }
    }
    StoreError::Sqlite(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Severity;

    fn sample_node() -> Node {
        let mut node = Node::new(
            "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            "ipmi".into(),
            ProvisionState::Enroll,
            "t0".into(),
        );
        node.name = Some("node-1".into());
        node.properties.insert("cpus".into(), Value::from(4));
        node.driver_info.insert("ipmi_password".into(), Value::from("secret"));
        node.interfaces.insert("power".into(), Value::from("ipmitool"));
        node.secure_boot = Some(true);
        node.automated_clean = Some(false);
        node.maintenance = true;
        node.target_provision_state = Some(ProvisionState::Manageable);
        node
    }

    #[tokio::test]
    async fn nodes_round_trip_through_every_column() {
        let store = Store::open_in_memory().unwrap();
        let node = sample_node();
        let stored = node.clone();
        let back = store
            .run(move |tx| {
                tx.insert_node(&stored)?;
                tx.node_by_uuid(&stored.uuid)
            })
            .await
            .unwrap();
        assert_eq!(back, Some(node));
    }

    #[tokio::test]
    async fn duplicate_names_and_addresses_are_reported_by_column() {
        let store = Store::open_in_memory().unwrap();
        let result = store
            .run(|tx| {
                let first = sample_node();
                tx.insert_node(&first)?;
                let mut second = sample_node();
                second.uuid = "6a4bbf55-8b47-4a1f-bb3a-4cbc8f6c2fb2".into();
                tx.insert_node(&second)
            })
            .await;
        assert!(matches!(result, Err(StoreError::Duplicate { column }) if column == "nodes.name"));
    }

    #[tokio::test]
    async fn deleting_a_node_removes_its_ports_history_and_inventory() {
        let store = Store::open_in_memory().unwrap();
        let counts = store
            .run(|tx| {
                let node = sample_node();
                tx.insert_node(&node)?;
                let port = Port {
                    uuid: "p1".into(),
                    address: "52:54:00:00:00:01".into(),
                    node_uuid: node.uuid.clone(),
                    pxe_enabled: true,
                    extra: JsonObject::new(),
                    created_at: "t0".into(),
                    updated_at: None,
                };
                tx.insert_port(&port)?;
                tx.insert_history(&HistoryEvent {
                    uuid: "h1".into(),
                    node_uuid: node.uuid.clone(),
                    created_at: "t0".into(),
                    severity: Severity::Info,
                    event_type: "provisioning".into(),
                    event: "x".into(),
                    conductor: None,
                    user: None,
                    from_state: None,
                    to_state: None,
                })?;
                tx.put_inventory(&node.uuid, &serde_json::json!({"cpu": {}}), "t0")?;
                let found = tx.nodes_by_port_addresses(&["52:54:00:00:00:01".into()])?.len();
                tx.delete_node(&node.uuid)?;
                Ok::<_, StoreError>((
                    found,
                    tx.list_ports(None, None)?.len(),
                    tx.history(&node.uuid)?.len(),
                    tx.inventory(&node.uuid)?.is_some(),
                ))
            })
            .await
            .unwrap();
        assert_eq!(counts, (1, 0, 0, false));
    }

    #[tokio::test]
    async fn failed_work_rolls_back() {
        let store = Store::open_in_memory().unwrap();
        let result: Result<(), StoreError> = store
            .run(|tx| {
                tx.insert_node(&sample_node())?;
                Err(StoreError::Duplicate { column: "forced".into() })
            })
            .await;
        assert!(result.is_err());
        let nodes = store.run(|tx| tx.list_nodes(&NodeQuery::default())).await.unwrap();
        assert!(nodes.is_empty());
    }
}
