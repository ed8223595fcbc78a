"""The core: the :class:`~.bus.MessageBus` facade over the broker seam.

Delivery policy is decided here, once, for every engine: the publish path, the consume loop
(receive, admit, handle, settle), requests and their answers, the pull side and dead letters.
"""
