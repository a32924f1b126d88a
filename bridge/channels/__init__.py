"""Vendor channels: APNs, FCM, Huawei Push Kit, Xiaomi MiPush, WebPush (one module each)."""
