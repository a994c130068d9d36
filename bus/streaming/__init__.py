"""Kafka and Faust plumbing: the client factory, the codec, the topic catalogue, metrics,
ACLs, the AsyncAPI document and the broker reachability check."""
