"""SIEM sinks: the audit log, in sequence order, as OCSF, CEF or RFC 5424 syslog over TCP/TLS,
or Splunk HEC events, each sink moving a durable cursor only after its receiver acknowledged."""
