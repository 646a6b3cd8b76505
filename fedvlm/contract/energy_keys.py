"""Keys of the energy scalars in a node's train / evaluate MetricRecord.

Part of the message contract (`fedvlm.contract`): each site's meter writes them
(`fedvlm.energy.reading_to_metrics`) and the coordinator reads them back
(`fedvlm.energy.metrics_to_reading`).
"""

METRIC_KWH = "energy-kwh"
METRIC_CPU_KWH = "energy-cpu-kwh"
METRIC_GPU_KWH = "energy-gpu-kwh"
METRIC_RAM_KWH = "energy-ram-kwh"
METRIC_RAM_WATTS = "energy-ram-watts"
METRIC_EMISSIONS_KG = "emissions-kg"
METRIC_SECONDS = "energy-seconds"
METRIC_INTENSITY = "carbon-intensity"
METRIC_METHOD = "energy-method"  # fedvlm.energy.metrics.method_code: methods and intensity source
METRIC_COUNTRY = "energy-country"
