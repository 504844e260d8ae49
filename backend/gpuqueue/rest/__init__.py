"""The HTTP API and its client: the tornado handlers and routes shared by the Jupyter server
extension and the cluster API service (``handlers``), the submit body parser (``jsonbody``), the
synchronous client the CLI and the kernel use (``client``) and the rule by which a client asks
again for a read the API refused at its user's bound (``readretry``)."""
