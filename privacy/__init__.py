"""Privacy protections of fedvlm: differential privacy and secure aggregation.

Sub-packages import only `fedvlm`, so both the client and the coordinator can use them.
"""
