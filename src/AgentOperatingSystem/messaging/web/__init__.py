"""The node's web face: the dashboard and the admin API it uses."""
