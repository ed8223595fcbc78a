"""The node's web face: the dashboard and the admin API it uses.

:mod:`.dashboard` (``install_dashboard``: routes, access, the page from ``static/``),
:mod:`.admin` (the ``/admin`` handlers), :mod:`.events` (the live stream) and
:mod:`.jsonapi` (JSON error bodies and parameters).
"""
