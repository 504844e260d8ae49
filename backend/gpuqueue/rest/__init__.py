"""The HTTP API and its client: the tornado handlers and routes shared by the Jupyter server
extension and the cluster API service (``handlers``), the submit body parser (``jsonbody``) and
the synchronous client the CLI and the kernel use (``client``)."""
