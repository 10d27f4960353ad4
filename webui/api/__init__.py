"""HTTP: the AUTOMATIC1111-compatible `/sdapi/v1`, our own `/api/v1`, login and request guards."""
