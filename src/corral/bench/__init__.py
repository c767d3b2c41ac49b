"""Load testing: corral bench, generated locustfiles and wrk scripts."""
