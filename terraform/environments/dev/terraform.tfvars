namespace = "shop-dev"
