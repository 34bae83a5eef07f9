"""Simulated SDM630, SDM120 and SunSpec meters served over Modbus TCP and RTU."""
