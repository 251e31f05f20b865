"""The transport boundary between gputel's streamer/collector and a broker: walbroker or Kafka.

`url.parse_broker` reads `--broker`; `factory` builds clients for it; `base` names what they
offer. Nothing outside this package imports confluent_kafka (nor, for the streamer and the
collector, walbroker's client classes).
"""
