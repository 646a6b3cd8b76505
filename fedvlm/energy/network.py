"""The network model: bytes that crossed the wire -> energy and carbon.

Nothing measures the internet's share of a round, so it is estimated from the bytes each side
sent and a published transmission intensity; the report labels it an estimate.
"""

from __future__ import annotations

#: Electricity intensity of internet data transmission: 0.06 kWh/GB for 2015 from Aslan, Mayers,
#: Koomey & France, "Electricity Intensity of Internet Data Transmission: Untangling the
#: Estimates", Journal of Industrial Ecology 22(4):785-798 (2018). They find it halves roughly
#: every two years, so for today's networks it is a deliberately conservative upper estimate;
#: override with the run-config key `network-kwh-per-gb`.
DEFAULT_NETWORK_KWH_PER_GB = 0.06


def network_energy(
    bytes_total: float,
    intensity_g_per_kwh: float,
    kwh_per_gb: float = DEFAULT_NETWORK_KWH_PER_GB,
) -> tuple[float, float]:
    """Energy and carbon of moving `bytes_total` bytes over the internet.

    Parameters
    ----------
    bytes_total
        Bytes that crossed the wire (1 GB = 1e9 bytes).
    intensity_g_per_kwh
        Grid intensity of the sending side.
    kwh_per_gb
        Transmission intensity; the default 0.06 kWh/GB is Aslan et al. (2018), J. Ind. Ecol.
        22(4):785-798, for 2015 (an upper estimate today: it halves about every two years).

    Returns
    -------
    tuple[float, float]
        (kWh, kg CO2e).
    """
    if bytes_total < 0 or kwh_per_gb < 0:
        raise ValueError("bytes and kWh/GB must be >= 0")
    kwh = bytes_total / 1e9 * kwh_per_gb
    return kwh, kwh * intensity_g_per_kwh / 1000.0
