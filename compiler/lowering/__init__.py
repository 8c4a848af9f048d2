"""Lowering: the IR graph + a protocol profile -> a :class:`Program` (per node: approximations used and plan).

A node's *plan* is the ordered list of vectorised MP-SPDZ calls its template makes (:class:`Step`); the cost model
prices plans, the reference executor and the templates follow the same sequence of calls and truncations.
"""
from compiler.lowering.plans import ApproxUse, NodePlan, Program, lower, plan
from compiler.lowering.profiles import Profile, get_profile, parse_approx_flags

__all__ = ["ApproxUse", "NodePlan", "Program", "Profile", "get_profile", "lower", "parse_approx_flags", "plan"]
