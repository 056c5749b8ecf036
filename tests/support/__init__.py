"""What the tests share that is not a fixture: tiny models, configs, servers, drivers."""
