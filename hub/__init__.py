"""The SEGS hub: ingest, storage, tariffs, alerts, billing and the REST/WebSocket API."""
