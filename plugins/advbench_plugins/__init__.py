"""advbench's built-in plugins: baselines, defenses, attacks and the embedded tiny world."""
