namespace = "shop"
