"""Starting one attempt of a job on a node: its argv and environment (``launch``), the supervisor
process that watches it (``runner``), its files on disk (``jobdir``), whose uid it runs as
(``identity``) and the GPUs a node has (``gpus``). Used by the embedded service and the cluster
worker alike."""
