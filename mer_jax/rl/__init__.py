"""Reinforcement stage (GRPO): rollouts with the KV-cache sampler, rewards, objective, update, loop."""
