"""The contract every loss follows: reduction, checks, dtype policy, registry and the module base."""
