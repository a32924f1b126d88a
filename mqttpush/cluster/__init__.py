"""The link between broker nodes and bridges of a cluster, over NATS (docs/scale-out.md, "Processes").

``wire`` (pure: subjects and frames), ``link`` (the connection), ``node`` (a broker node's side,
over ``mqttpush.broker`` and the store), ``publisher`` (a bridge's side). The only importer of
nats-py; the composition root (``mqttpush.server``) wires it to the broker and the bridge.
"""
