"""Run compiled programs under MP-SPDZ and measure them."""
