"""The SEGS edge agent: Modbus polling, minute windows, store-and-forward, MQTT publishing."""
