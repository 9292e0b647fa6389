"""What the GeoEdge programs share below their own packages: process plumbing, and the name
their HTTP servers give (geoedge.http). Nothing else.

gslb and edge are separate tiers and neither should import the other for a few lines of
process handling; geo is about places and would load the GeoIP reader into every edge. So
the little both tiers need lives here. Keep it small, and free of imports of gslb, edge and
geo.
"""
