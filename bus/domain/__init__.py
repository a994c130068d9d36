"""What the bus knows and decides, without Kafka: the enterprise record, matters, tasks,
certificates, working days, the department directory and who may do what."""
