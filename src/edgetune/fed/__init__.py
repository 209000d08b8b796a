"""Fleet tuning: federated LoRA across devices on Flower, with the runtime's torch-free training on every node.

aggregation (the LoRA math) · payload (what travels) · local (one node's round) · client_app ·
strategies · server_app · server_rounds (what the server writes) · evaluation · simulation ·
flower_app (the app folder for `flwr run`) · secagg_server, secagg_client (SecAgg+ rounds on Flower's
legacy API). Needs the `fed` extra; never imports torch.
"""
