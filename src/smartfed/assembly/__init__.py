"""Assembly: turns a run configuration into live objects (base model, pool, method, data) and
loads finished runs; the one place above the methods that knows how a run is put together."""
