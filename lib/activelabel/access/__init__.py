"""Access control: roles and the route policy, the access mode, users and authentication."""
