// The candidate map: the lost and found points and the line between them, with Leaflet served by the dashboard.
// Tiles only when dashboard.tile_url is set; without them the points and the line render on a blank background.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("map-data").textContent);
  var box = document.getElementById("map");
  var sides = Object.keys(data.points);
  if (!sides.length) { box.hidden = true; return; }
  var map = L.map(box, { scrollWheelZoom: false });
  if (data.tile_url) {
    L.tileLayer(data.tile_url, { maxZoom: 19, attribution: "" }).addTo(map);
    if (data.attribution) {
      var credit = document.createElement("span");
      credit.textContent = data.attribution;  // addAttribution takes HTML: the configured text goes in escaped
      map.attributionControl.addAttribution(credit.innerHTML);
    }
  }
  var colours = { lost: "#d9534f", found: "#3f7fbf" };
  var labels = { lost: "lost here", found: "found here" };
  sides.forEach(function (side) {
    var tip = document.createElement("span");
    tip.textContent = labels[side];
    L.circleMarker(data.points[side], { radius: 9, color: colours[side], fillOpacity: 0.8 })
      .bindTooltip(tip, { permanent: true, direction: "top" })
      .addTo(map);
  });
  if (sides.length === 2) {
    var line = L.polyline([data.points.lost, data.points.found], { color: "#1f4e79", dashArray: "6 6" }).addTo(map);
    if (data.distance_km !== null) {
      var km = document.createElement("span");
      km.textContent = data.distance_km.toFixed(1) + " km";
      line.bindTooltip(km, { permanent: true, direction: "center" });
    }
    map.fitBounds(line.getBounds(), { padding: [40, 40], maxZoom: 15 });
  } else {
    map.setView(data.points[sides[0]], 13);
  }
  box.dataset.ready = "1";
})();
