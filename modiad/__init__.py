"""MODIAD: federated, online, multimodal industrial anomaly detection over MQTT.

The shared core used by every service: protocol, codec, settings, transports,
features, the mapper model, metrics and the command line.
"""

__version__ = "0.1.0"
