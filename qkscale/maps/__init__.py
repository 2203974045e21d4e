"""Point maps: each 2D projection in a spatial order with a raster pyramid, so views cost what they show."""
