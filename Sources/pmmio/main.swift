print("pmmio: placeholder")
