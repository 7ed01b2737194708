"""The workflow layer: configuration, jobs, downloads, provenance, data, tables, figures and the report.

It may import the core and the evaluation layer; nothing below imports it (tests/test_layers.py). Its modules are
imported one by one (this file imports none), so a job depends only on the code it runs."""
