//! A STAC API as operators reach archives (#32 item 4), against two real servers the
//! test starts on 127.0.0.1: rustac's STAC API server (`rustac serve`, in-memory
//! backend) over a collection of COGs written by `demo-data --dn`, and nginx serving
//! those COGs by HTTP range requests. The run searches the API (bbox, `[input]`
//! start/end, cloud cover), freezes the items in its run directory, reads the assets
//! through GDAL's `/vsicurl/`, and gives the values a local series folder of the same
//! files gives; a rerun reads the frozen items with the API gone.

use crate::common;
use gdal::Metadata;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A server process, killed when dropped.
struct Server {
    child: Child,
    /// nginx's listening socket, which the test bound and nginx inherited.
    _socket: Option<TcpListener>,
}

impl Drop for Server {
    /// SIGTERM, which nginx's master passes on to its workers before it exits (a SIGKILL
    /// would leave them running); then waits for it.
    fn drop(&mut self) {
        // SAFETY: kill() on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// nginx serving `root` on a socket the test binds and hands it (nginx takes listening
/// sockets from the `NGINX` environment variable, as in its binary upgrade): requests
/// wait in the socket's backlog until nginx accepts them, so there is nothing to wait
/// for, and no port another process could take in between.
fn nginx(root: &Path, dir: &Path) -> (Server, u16) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().map(PathBuf::from).find(|p| p.is_file());
    let binary = binary.unwrap_or_else(|| panic!("missing: nginx (/usr/sbin/nginx; scripts/setup.sh installs it)"));
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let (port, fd) = (socket.local_addr().unwrap().port(), socket.as_raw_fd());
    let d = dir.display();
    let conf = format!(
        // Workers as the test's own user: a root master would give them nobody's rights,
        // which cannot read the test's private temp folder (nginx ignores `user` when
        // not started as root).
        "daemon off;\nuser root root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  types {{ image/tiff tif; }}\n  \
         server {{ listen 127.0.0.1:{port}; root {}; location / {{ }} }}\n}}\n",
        root.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let out = std::fs::File::create(dir.join("nginx.log")).unwrap();
    let mut command = Command::new(binary);
    command
        .args(["-p", &dir.display().to_string(), "-c", &conf_path.display().to_string(), "-e", &dir.join("nginx-error.log").display().to_string()])
        .env("NGINX", format!("{fd};"))
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // The socket crosses exec in nginx only (Rust opens it close-on-exec).
    // SAFETY: fcntl is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    (Server { child, _socket: Some(socket) }, port)
}

/// `rustac serve` on a free port; returns once it says it serves, which it prints only
/// after binding (it prints nothing of the kind when the port is taken).
fn rustac(files: &[&Path], dir: &Path) -> (Server, u16) {
    use std::io::BufRead;
    let home = common::workspace().join(".deps/rustac-0.9.18");
    let binary = home.join("bin/rustac");
    assert!(binary.is_file(), "missing: {} (scripts/setup.sh installs rustac, the STAC API server)", binary.display());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.join("rustac.log");
    let mut child = Command::new(binary)
        .env("PYTHONPATH", &home)
        .arg("serve")
        .args(files)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says so on stderr.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("Serving a STAC API at") => break,
            Some(Ok(line)) => said.push(line),
            _ => panic!("rustac serve ended before serving:\n{}", said.join("\n")),
        }
    }
    // Whatever it prints later must not fill the pipe and stall it.
    std::thread::spawn(move || lines.for_each(drop));
    (Server { child, _socket: None }, port)
}

/// WGS 84 bounds of a raster.
fn wgs84_bbox(path: &Path) -> [f64; 4] {
    use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
    let ds = gdal::Dataset::open(path).unwrap();
    let gt = ds.geo_transform().unwrap();
    let (w, h) = ds.raster_size();
    let mut from = SpatialRef::from_wkt(&ds.projection()).unwrap();
    let mut to = SpatialRef::from_epsg(4326).unwrap();
    from.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    to.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let b = [gt[0], gt[3] + gt[5] * h as f64, gt[0] + gt[1] * w as f64, gt[3]];
    CoordTransform::new(&from, &to).unwrap().transform_bounds(&b, 21).unwrap()
}

fn sitsflow(project: &Path, args: &[&str]) -> String {
    let out = common::sitsflow_command(project).args(args).env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sitsflow {args:?} failed:\n{text}");
    text
}

fn read_f32(path: &Path) -> Vec<f32> {
    let ds = gdal::Dataset::open(path).unwrap();
    (1..=ds.raster_count()).flat_map(|b| ds.rasterband(b).unwrap().read_band_as::<f32>().unwrap().data().to_vec()).collect()
}

/// The window of `whole` that `part` covers (same pixel size and CRS), band by band.
fn read_window(whole: &Path, part: &Path) -> Vec<f32> {
    let (w, p) = (gdal::Dataset::open(whole).unwrap(), gdal::Dataset::open(part).unwrap());
    let (gw, gp) = (w.geo_transform().unwrap(), p.geo_transform().unwrap());
    let (col, row) = (((gp[0] - gw[0]) / gw[1]).round() as isize, ((gp[3] - gw[3]) / gw[5]).round() as isize);
    let size = p.raster_size();
    (1..=w.raster_count()).flat_map(|b| w.rasterband(b).unwrap().read_as::<f32>((col, row), size, size, None).unwrap().data().to_vec()).collect()
}

#[test]
fn a_stac_api_search_is_frozen_in_the_run_and_its_cogs_are_read_by_range_requests() {
    let project = common::project_dir();
    let dir = project.path();
    let demo = dir.join("demo");
    sitsflow::demo::generate(&demo, &sitsflow::demo::DemoOptions { size: 64, dates_per_year: 4, dn: true, ..Default::default() }).unwrap();

    // The collection: each date's bands as one COG, one item per date with its
    // eo:bands and raster:bands, and a cloud cover that leaves some out.
    let cogs = dir.join("www");
    std::fs::create_dir_all(&cogs).unwrap();
    let mut dates: Vec<String> =
        std::fs::read_dir(demo.join("series")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".tif").to_string()).collect();
    dates.sort();
    let driver = gdal::DriverManager::get_driver_by_name("COG").unwrap();
    let (nginx_server, nginx_port) = {
        let servers = dir.join("servers");
        std::fs::create_dir_all(&servers).unwrap();
        nginx(&cogs, &servers)
    };
    let mut items = Vec::new();
    let mut kept = Vec::new();
    for (i, date) in dates.iter().enumerate() {
        let source = gdal::Dataset::open(demo.join(format!("series/{date}.tif"))).unwrap();
        let cog = cogs.join(format!("{date}.tif"));
        source.create_copy(&driver, &cog, &gdal::raster::RasterCreationOptions::new()).unwrap();
        let bands: Vec<(String, f64, f64)> = (1..=source.raster_count())
            .map(|b| {
                let band = source.rasterband(b).unwrap();
                (band.description().unwrap(), band.scale().unwrap_or(1.0), band.offset().unwrap_or(0.0))
            })
            .collect();
        let cloud = (i * 37 % 100) as f64;
        let bbox = wgs84_bbox(&cog);
        items.push(json!({
            "type": "Feature", "stac_version": "1.0.0", "id": format!("demo-{date}"), "collection": "demo",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json", "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "bbox": bbox,
            "geometry": {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]},
            "properties": {"datetime": format!("{date}T10:00:00Z"), "eo:cloud_cover": cloud},
            "links": [],
            "assets": {"data": {
                "href": format!("http://127.0.0.1:{nginx_port}/{date}.tif"),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "eo:bands": bands.iter().map(|(n, _, _)| json!({"name": n})).collect::<Vec<_>>(),
                "raster:bands": bands.iter().map(|(_, s, o)| json!({"scale": s, "offset": o, "nodata": 0})).collect::<Vec<_>>(),
            }},
        }));
        if date.starts_with("2019") && cloud <= 60.0 {
            kept.push(date.clone());
        }
    }
    assert!(kept.len() >= 2 && kept.len() < 4, "the cloud cover leaves out some of 2019's dates: {kept:?}");
    let collection = dir.join("servers/collection.json");
    let bbox = wgs84_bbox(&cogs.join(format!("{}.tif", dates[0])));
    std::fs::write(
        &collection,
        json!({"type": "Collection", "stac_version": "1.0.0", "id": "demo", "description": "demo-data --dn as COGs", "license": "other",
               "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [["2018-01-01T00:00:00Z", null]]}}, "links": []})
        .to_string(),
    )
    .unwrap();
    let items_file = dir.join("servers/items.json");
    std::fs::write(&items_file, json!({"type": "FeatureCollection", "features": items}).to_string()).unwrap();
    let (api, api_port) = rustac(&[&collection, &items_file], &dir.join("servers"));

    // The same dates as a local series folder: what the run must read.
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    for d in &kept {
        std::fs::copy(demo.join(format!("series/{d}.tif")), local.join(format!("{d}.tif"))).unwrap();
    }
    // The middle of the scene: the grid is the items' cropped to it.
    let (dx, dy) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let area = [bbox[0] + 0.25 * dx, bbox[1] + 0.25 * dy, bbox[0] + 0.75 * dx, bbox[1] + 0.75 * dy];
    let pipeline = |input: &str, run: &str| {
        format!(
            "schema = 1\nname = \"stac\"\n\n[input]\n{input}\nbands = [\"B04\", \"B08\", \"SCL\"]\n\n[output]\ndir = \"runs/{run}\"\n\n[plugins]\ndir = \"plugins\"\n\n\
             [[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\n\n[[stage]]\nid = \"features\"\nplugin = \"indices@0.1.0\"\nparams = {{ indices = [\"NDVI\"], bands = [\"B04\", \"B08\"] }}\n"
        )
    };
    let search = format!(
        "stac_api = {{ url = \"http://127.0.0.1:{api_port}\", collections = [\"demo\"], bbox = [{}, {}, {}, {}], max_cloud_cover = 60 }}\nstart = \"2019-01-01\"\nend = \"2019-12-31\"",
        area[0], area[1], area[2], area[3]
    );
    std::fs::write(dir.join("stac.toml"), pipeline(&search, "stac")).unwrap();
    std::fs::write(dir.join("local.toml"), pipeline("series = \"local\"", "local")).unwrap();
    for p in ["stac.toml", "local.toml"] {
        sitsflow(dir, &["--quiet", "plugins", "lock", p]);
    }
    let log = sitsflow(dir, &["validate", "stac.toml"]);
    assert!(log.contains(&format!("input: {} dates × 3 bands", kept.len())), "{log}");
    let (side, cropped) = (64, dir.join("runs/stac/features.tif"));
    let log = sitsflow(dir, &["run", "stac.toml"]);
    assert!(log.contains(&format!("STAC search of http://127.0.0.1:{api_port} (demo): 4 items, {} left out above 60% cloud cover", 4 - kept.len())), "{log}");
    sitsflow(dir, &["run", "local.toml"]);

    // The items found are frozen in the run directory, and the manifest's dates are theirs.
    let frozen: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/stac/stac-items.json")).unwrap()).unwrap();
    let ids: Vec<&str> = frozen["features"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, kept.iter().map(|d| format!("demo-{d}")).collect::<Vec<_>>());
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/stac/manifest.json")).unwrap()).unwrap();
    let recorded = &manifest["series"]["stac_search"];
    assert_eq!((recorded["collections"][0].as_str(), recorded["max_cloud_cover"].as_f64()), (Some("demo"), Some(60.0)), "{recorded}");
    assert_eq!(recorded["frozen_items"]["sha256"].as_str().map(str::len), Some(64), "{recorded}");
    let read: Vec<&str> = manifest["inputs"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert!(read.iter().all(|p| p.starts_with(&format!("/vsicurl/http://127.0.0.1:{nginx_port}/"))), "{read:?}");
    // The grid is the middle of the scene, whole pixels of the items' grid; over HTTP the
    // values are those of the local files there, bit for bit.
    let (w, h) = gdal::Dataset::open(&cropped).unwrap().raster_size();
    assert!((28..=36).contains(&w) && (28..=36).contains(&h), "{w} × {h} px of {side} × {side}");
    for name in ["features.tif", "clouds.tif"] {
        let (a, b) = (read_f32(&dir.join("runs/stac").join(name)), read_window(&dir.join("runs/local").join(name), &dir.join("runs/stac").join(name)));
        assert!(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs between the STAC and the local run");
    }
    // GDAL read the COGs by range requests (206), not whole.
    let access = std::fs::read_to_string(dir.join("servers/access.log")).unwrap();
    assert!(access.lines().any(|l| l.contains("\" 206 ")), "no range request in nginx's log:\n{access}");

    // With the API gone, a rerun reads the frozen items.
    drop(api);
    std::fs::remove_dir_all(dir.join("runs/stac/.partial")).ok();
    let log = sitsflow(dir, &["run", "stac.toml"]);
    assert!(log.contains("reading the STAC items frozen in"), "{log}");
    let again = read_f32(&dir.join("runs/stac/features.tif"));
    let local = read_window(&dir.join("runs/local/features.tif"), &dir.join("runs/stac/features.tif"));
    assert!(again.iter().zip(&local).all(|(x, y)| x.to_bits() == y.to_bits()));
    drop(nginx_server);
}
