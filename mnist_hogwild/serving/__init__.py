"""The serving layer: `serve` runs it. (The process model: see below, once measured.)"""
