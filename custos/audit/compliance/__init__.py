"""What auditors and operators run over the stored trail: verification, retention (purge and
legal holds), export to OTLP and JSON lines, and usage reports."""
