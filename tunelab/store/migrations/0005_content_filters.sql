-- Custom content filter policies (Default and None are built in).
CREATE TABLE content_filters (
    name       TEXT PRIMARY KEY,
    config     TEXT NOT NULL,                   -- {"prompt": {category: level}, "completion": {…}, "blocklist": […]}
    updated_at INTEGER NOT NULL
);
