//! Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
//! Never edit a released migration: append a new one.

pub const MIGRATIONS: &[&str] = &[
    // 1: nodes, ports, node history and node inventory.
    r#"
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT UNIQUE,
        driver TEXT NOT NULL,
        provision_state TEXT NOT NULL,
        target_provision_state TEXT,
        power_state TEXT,
        target_power_state TEXT,
        last_error TEXT,
        maintenance INTEGER NOT NULL DEFAULT 0,
        maintenance_reason TEXT,
        fault TEXT,
        boot_mode TEXT,
        secure_boot INTEGER,
        properties TEXT NOT NULL DEFAULT '{}',
        instance_info TEXT NOT NULL DEFAULT '{}',
        driver_info TEXT NOT NULL DEFAULT '{}',
        driver_internal_info TEXT NOT NULL DEFAULT '{}',
        extra TEXT NOT NULL DEFAULT '{}',
        deploy_step TEXT NOT NULL DEFAULT '{}',
        network_data TEXT NOT NULL DEFAULT '{}',
        interfaces TEXT NOT NULL DEFAULT '{}',
        reservation TEXT,
        instance_uuid TEXT UNIQUE,
        chassis_uuid TEXT,
        resource_class TEXT,
        conductor_group TEXT NOT NULL DEFAULT '',
        description TEXT,
        owner TEXT,
        lessee TEXT,
        shard TEXT,
        parent_node TEXT,
        automated_clean INTEGER,
        console_enabled INTEGER NOT NULL DEFAULT 0,
        protected INTEGER NOT NULL DEFAULT 0,
        protected_reason TEXT,
        retired INTEGER NOT NULL DEFAULT 0,
        retired_reason TEXT,
        disable_power_off INTEGER NOT NULL DEFAULT 0,
        agent_token_hash TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT,
        provision_updated_at TEXT
    );
    CREATE INDEX nodes_provision_state ON nodes (provision_state);

    CREATE TABLE ports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL UNIQUE,
        node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
        pxe_enabled INTEGER NOT NULL DEFAULT 1,
        extra TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT
    );
    CREATE INDEX ports_node_uuid ON ports (node_uuid);

    CREATE TABLE node_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        severity TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event TEXT NOT NULL,
        conductor TEXT,
        user TEXT,
        from_state TEXT,
        to_state TEXT
    );
    CREATE INDEX node_history_node_uuid ON node_history (node_uuid);

    CREATE TABLE node_inventory (
        node_uuid TEXT PRIMARY KEY REFERENCES nodes (uuid) ON DELETE CASCADE,
        inventory TEXT NOT NULL,
        plugin_data TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    "#,
    // 2: when a node's reservation (its lock, `nodes.reservation` naming the holder) lapses.
    r#"
    ALTER TABLE nodes ADD COLUMN reservation_expires_at TEXT;
    "#,
    // 3: the running clean step and inspection times (Ironic's `clean_step`, `inspection_*_at`).
    r#"
    ALTER TABLE nodes ADD COLUMN clean_step TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE nodes ADD COLUMN inspection_started_at TEXT;
    ALTER TABLE nodes ADD COLUMN inspection_finished_at TEXT;
    "#,
];
