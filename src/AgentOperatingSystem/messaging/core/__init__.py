"""The core: the :class:`~.bus.MessageBus` facade over the broker seam.

Delivery policy is decided here, once, for every engine. One module per concept:

* :mod:`.bus` -- the facade: lifecycle and the public methods, each a thin delegation;
* :mod:`.state` -- what the parts share (config, engine and its capabilities, hooks);
* :mod:`.publish` -- the one publish path (build, guard, route, observe, encode, deliver);
* :mod:`.consume` -- the one consume loop (receive, admit, handle, settle) and lock renewal,
  run by :mod:`.subscriptions`, the reply listener of :mod:`.requests` and :mod:`.streams`;
* :mod:`.admit` -- admission checks, dead-lettering with a reason, the retry policy;
* :mod:`.requests` -- request/reply: correlation futures, the one route of an answer;
* :mod:`.pull` -- get_messages/receive and acknowledge/nack;
* :mod:`.deadletters` -- dead letters as Messages, resubmit;
* :mod:`.context` -- the delivery a handler is running for;
* :mod:`.hooks` -- the security and telemetry hooks the paths call.
"""
