"""Policy compiled once per config revision: access rules and the metadata contract."""
