//! The dev-database helper starts a throwaway cluster when asked to.

use eventrail_devdb::{
    accepts_connections, postgres_bin_dir, start_throwaway_cluster, stop_throwaway_cluster,
};

#[tokio::test]
async fn starts_reuses_and_stops_a_throwaway_cluster() -> anyhow::Result<()> {
    assert!(
        postgres_bin_dir().is_some(),
        "this machine has PostgreSQL binaries"
    );
    let dir = std::env::temp_dir()
        .join(format!(
            "eventrail-devdb-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .join("data");
    let port = 54_331;
    let url = start_throwaway_cluster(&dir, port).await?;
    let result = async {
        assert!(accepts_connections(&url).await);
        let client = crate::harness::connect(&url).await?;
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        assert!(!version.is_empty());
        // A second start finds it running and reuses it.
        assert_eq!(start_throwaway_cluster(&dir, port).await?, url);
        anyhow::Ok(())
    }
    .await;
    stop_throwaway_cluster(&dir)?;
    assert!(!accepts_connections(&url).await, "stopped");
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    result
}
