"""The node's web face: the dashboard and the admin API it uses.

:mod:`.dashboard` (``install_dashboard``: routes, access, the page from ``static/``),
:mod:`.routes` (the ``/admin`` route table) and :mod:`.openapi` (its OpenAPI 3.1 document,
with :mod:`.schemas`), :mod:`.admin` (the core handlers), :mod:`.deadletters` (filtered and
bulk dead letters), :mod:`.sampler` (charts over time), :mod:`.recorder` and :mod:`.traces`
(causation trees, conversation timelines), :mod:`.events` (the live stream) and
:mod:`.jsonapi` (JSON error bodies and parameters).
"""
